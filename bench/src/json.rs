//! Just enough JSON to read the flat objects the load clients print (`dummy-client --json`,
//! `churn-client`): top-level numbers and strings by key.

/// The raw text of the value of top-level key `key` in a flat JSON object.
fn raw<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\"");
    let mut from = 0;
    while let Some(pos) = json[from..].find(&pat) {
        let after = from + pos + pat.len();
        let rest = json[after..].trim_start();
        if let Some(value) = rest.strip_prefix(':') {
            let value = value.trim_start();
            let end = if value.starts_with('"') {
                let bytes = value.as_bytes();
                let mut i = 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                (i + 1).min(value.len())
            } else {
                value.find([',', '}']).unwrap_or(value.len())
            };
            return Some(value[..end].trim());
        }
        from = after;
    }
    None
}

pub fn number(json: &str, key: &str) -> Option<f64> {
    raw(json, key)?.parse().ok()
}

/// A string value, unescaped (`\"` and `\\` only); `None` for `null` or a missing key.
pub fn string(json: &str, key: &str) -> Option<String> {
    let v = raw(json, key)?;
    let inner = v.strip_prefix('"')?.strip_suffix('"')?;
    Some(inner.replace("\\\"", "\"").replace("\\\\", "\\"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_flat_objects() {
        let j = r#"{"mode":"echo","backend":"io_uring","sessions":100,"msgs_per_sec":201234.5,"p50_us":48,"first_error":null,"x":"a \"q\", b}"}"#;
        assert_eq!(string(j, "mode").as_deref(), Some("echo"));
        assert_eq!(number(j, "sessions"), Some(100.0));
        assert_eq!(number(j, "msgs_per_sec"), Some(201234.5));
        assert_eq!(number(j, "p50_us"), Some(48.0));
        assert_eq!(string(j, "first_error"), None);
        assert_eq!(string(j, "x").as_deref(), Some("a \"q\", b}"));
        assert_eq!(number(j, "missing"), None);
    }
}
