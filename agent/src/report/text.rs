//! The Prometheus text format (and OpenMetrics' sample lines), read as far as a report needs:
//! each sample's name, labels and value. Comments, timestamps and exemplars are skipped; a line
//! that is not a sample is an error naming the line, and label sets are bounded.

use std::collections::HashMap;

use super::{
    series::{Labels, Series},
    ReportError,
};

/// Most labels on one sample (ours have 17 at most).
const MAX_LABELS: usize = 64;

/// Samples by metric name.
pub fn parse(origin: &str, text: &str) -> Result<HashMap<String, Vec<Series>>, ReportError> {
    let mut out: HashMap<String, Vec<Series>> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, value) = sample(line).map_err(|message| ReportError::Answer {
            url: origin.to_owned(),
            message: format!("line {}: {message}", n + 1),
        })?;
        // NaN and infinities are valid exposition but no count of bytes or dollars: left out,
        // so that they cannot reach a sum.
        if !value.is_finite() {
            continue;
        }
        out.entry(name.to_owned())
            .or_default()
            .push(Series { labels, value });
    }
    Ok(out)
}

fn sample(line: &str) -> Result<(&str, Labels, f64), String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("{name:?} is not a metric name"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Labels::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = label_set(inner)?;
        labels = parsed;
        rest = after;
    }
    let value = rest
        .split_whitespace()
        .next()
        .ok_or("no value")?
        .parse::<f64>()
        .map_err(|_| "the value is not a number".to_owned())?;
    Ok((name, labels, value))
}

/// `a="x",b="y"}` → the labels and what follows the `}`.
fn label_set(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Labels::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        if labels.len() >= MAX_LABELS {
            return Err(format!("more than {MAX_LABELS} labels"));
        }
        let eq = s.find('=').ok_or("a label without a value")?;
        let key = s[..eq].trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("{key:?} is not a label name"));
        }
        let quoted = s[eq + 1..]
            .strip_prefix('"')
            .ok_or("a label value without quotes")?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("an unfinished escape".into()),
                },
                Some((_, c)) => value.push(c),
                None => return Err("an unterminated label value".into()),
            }
        };
        labels.insert(key.to_owned(), value);
        s = &quoted[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_with_escaped_labels_and_refuses_garbage() {
        let text = "# HELP x y\nx_total{a=\"q\\\"}\\n\\\\\",b=\"2\"} 12.5 1700000000\nup 1\n";
        let m = parse("t", text).unwrap();
        let s = &m["x_total"][0];
        assert_eq!(s.labels["a"], "q\"}\n\\");
        assert_eq!(s.labels["b"], "2");
        assert_eq!(s.value, 12.5);
        assert_eq!(m["up"][0].value, 1.0);
        let odd = parse("t", "x NaN\ny +Inf\nz 2\n").unwrap();
        assert!(!odd.contains_key("x") && !odd.contains_key("y"), "{odd:?}");
        assert_eq!(odd["z"][0].value, 2.0);
        for bad in [
            "x{a=\"1} 2",
            "x{a=1} 2",
            "x{a=\"1\"}",
            "x{a=\"1\"} y",
            "{a=\"1\"} 2",
        ] {
            let e = parse("t", bad).unwrap_err().to_string();
            assert!(e.contains("line 1"), "{bad}: {e}");
        }
    }
}
