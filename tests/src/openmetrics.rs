//! A strict reader of the OpenMetrics text format (the subset prometheus-client writes): every
//! line is a `# HELP`, `# TYPE`, `# UNIT` or a sample of a declared family, label values use only
//! the `\\`, `\"` and `\n` escapes, and `# EOF` ends the exposition. Written from the
//! OpenMetrics specification's ABNF, independent of the agent's encoder, to prove that no label
//! value can end a line, a label set or a sample early.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

pub type Labels = BTreeMap<String, String>;

/// One sample: its metric name, labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

fn metric_name_ok(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn label_name_ok(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `{a="x",b="y"}` at the start of `s`; returns the labels and the rest.
fn labels(s: &str) -> std::result::Result<(Labels, &str), String> {
    let mut out = Labels::new();
    let mut rest = s.strip_prefix('{').ok_or("no {")?;
    if let Some(r) = rest.strip_prefix('}') {
        return Ok((out, r));
    }
    loop {
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !label_name_ok(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let Some((i, c)) = chars.next() else {
                return Err("unterminated label value".into());
            };
            match c {
                '"' => break i,
                '\\' => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                c => value.push(c),
            }
        };
        if out.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if let Some(r) = rest.strip_prefix('}') {
            return Ok((out, r));
        } else {
            return Err("expected , or } after a label".into());
        }
    }
}

/// Every sample of an OpenMetrics exposition, or the first line that breaks the format.
pub fn parse(text: &str) -> Result<Vec<Sample>> {
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut eof = false;
    for (n, line) in text.split('\n').enumerate() {
        let at = |why: String| anyhow::anyhow!("line {}: {why}: {line:?}", n + 1);
        if eof {
            if line.is_empty() {
                continue;
            }
            bail!(at("text after # EOF".into()));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !metric_name_ok(name) {
                bail!(at(format!("bad family name {name:?}")));
            }
            match kind {
                "TYPE" => {
                    let t = parts.next().unwrap_or("");
                    if ![
                        "counter",
                        "gauge",
                        "histogram",
                        "info",
                        "stateset",
                        "unknown",
                        "summary",
                        "gaugehistogram",
                    ]
                    .contains(&t)
                    {
                        bail!(at(format!("bad type {t:?}")));
                    }
                    families.insert(name.to_owned(), t.to_owned());
                }
                "HELP" | "UNIT" => {}
                _ => bail!(at(format!("unknown comment {kind:?}"))),
            }
            continue;
        }
        if line.is_empty() {
            bail!(at("empty line".into()));
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        let (labels, rest) = if line[name_end..].starts_with('{') {
            labels(&line[name_end..]).map_err(at)?
        } else {
            (Labels::new(), &line[name_end..])
        };
        let value_text = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("no space before the value".into()))?;
        let value_text = value_text.split(' ').next().unwrap_or("");
        let value: f64 = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| at(format!("bad value {v:?}")))?,
        };
        let family = ["_total", "_bucket", "_count", "_sum", "_created", "_info"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| families.contains_key(*f)))
            .unwrap_or(name);
        if !families.contains_key(family) {
            bail!(at(format!("sample of undeclared family {name:?}")));
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    if !eof {
        bail!("no # EOF");
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_escapes_and_refuses_broken_lines() {
        let ok = "# TYPE a counter\na_total{x=\"q\\\"\\n\\\\\"} 5\n# EOF\n";
        let s = parse(ok).unwrap();
        assert_eq!(s[0].labels["x"], "q\"\n\\");
        for bad in [
            "# TYPE a counter\na_total{x=\"q\"\"} 5\n# EOF\n",
            "# TYPE a counter\na_total{x=\"q\n\"} 5\n# EOF\n",
            "# TYPE a counter\nb_total 5\n# EOF\n",
            "# TYPE a counter\na_total{x=\"\\t\"} 5\n# EOF\n",
            "# TYPE a counter\na_total 5\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
