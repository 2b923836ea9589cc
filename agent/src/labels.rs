//! Label values that come from outside: Kubernetes objects (an `ownerReferences[].kind` or
//! `.name` is any non-empty string the API server accepts) and files on the state disk.
//! prometheus-client escapes `\`, `"` and newlines in the exposition; this also replaces what
//! would still mislead a reader or a dashboard — control characters, line and paragraph
//! separators, bidirectional overrides — with U+FFFD, and bounds the length so one object cannot
//! make every series it touches kilobytes long.

use std::borrow::Cow;

/// Longest label value kept whole, in bytes. Kubernetes names are at most 253 bytes; longer
/// values are cut and keep a hash of the whole, so two long values stay apart.
pub const MAX_VALUE_BYTES: usize = 256;

/// Characters replaced by U+FFFD.
fn misleading(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{FEFF}')
}

/// `value` as a label value may show it.
pub fn clean(value: &str) -> Cow<'_, str> {
    if value.len() <= MAX_VALUE_BYTES && !value.chars().any(misleading) {
        return Cow::Borrowed(value);
    }
    let mut out: String = value
        .chars()
        .map(|c| if misleading(c) { '\u{FFFD}' } else { c })
        .collect();
    if out.len() > MAX_VALUE_BYTES {
        // FNV-1a of the whole value: short, stable across restarts (the checkpoint keeps labels).
        let hash = value.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let mut cut = MAX_VALUE_BYTES - 20;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str(&format!("…{hash:016x}"));
    }
    Cow::Owned(out)
}

/// `clean` into an owned string.
pub fn owned(value: &str) -> String {
    clean(value).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_values_pass_untouched() {
        for v in [
            "cart-7d9f8c-x2x4p",
            "Deployment",
            "kube-system",
            "ünïcode-名前",
            "",
        ] {
            assert!(matches!(clean(v), Cow::Borrowed(_)), "{v}");
        }
    }

    #[test]
    fn control_characters_and_spoofing_marks_are_replaced() {
        assert_eq!(
            clean("a\nb\tc\u{0}d\u{7f}"),
            "a\u{FFFD}b\u{FFFD}c\u{FFFD}d\u{FFFD}"
        );
        assert_eq!(clean("x\u{2028}y\u{202E}z"), "x\u{FFFD}y\u{FFFD}z");
        // Quotes and braces are not misleading once escaped: prometheus-client escapes them.
        assert_eq!(clean("a\"}b#"), "a\"}b#");
    }

    #[test]
    fn long_values_are_cut_and_stay_distinct() {
        let a = "x".repeat(10_000);
        let b = format!("{}y", "x".repeat(9_999));
        let (ca, cb) = (clean(&a), clean(&b));
        assert!(ca.len() <= MAX_VALUE_BYTES && cb.len() <= MAX_VALUE_BYTES);
        assert_ne!(ca, cb);
        assert_eq!(clean(&a), ca, "stable");
        // Cut on a character boundary.
        let wide = "名".repeat(200);
        assert!(clean(&wide).len() <= MAX_VALUE_BYTES);
    }
}
