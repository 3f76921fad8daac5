//! Just enough JSON to read the flat objects the load clients print (`dummy-client --json`,
//! `churn-client`): top-level numbers and strings by key.

/// The raw text of the value of top-level key `key` in a JSON object. Keys of nested objects
/// (the dummy-client's `"tls": {..}`) are skipped, as are strings and arrays.
fn raw<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let b = json.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => {
                let end = string_end(b, i);
                // A key of the top-level object: a string followed by ':' at depth 1.
                let after = json[end..].trim_start();
                if depth == 1 && after.starts_with(':') && &json[i + 1..end - 1] == key {
                    let value = after[1..].trim_start();
                    let at = json.len() - value.len();
                    return Some(json[at..value_end(b, at)].trim());
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index just past the string literal that starts at `b[at] == '"'`.
fn string_end(b: &[u8], at: usize) -> usize {
    let mut i = at + 1;
    while i < b.len() && b[i] != b'"' {
        i += if b[i] == b'\\' { 2 } else { 1 };
    }
    (i + 1).min(b.len())
}

/// The index just past the value that starts at `b[at]`: a string, an object or array, or
/// a scalar (up to the next `,` or closing bracket).
fn value_end(b: &[u8], at: usize) -> usize {
    let mut depth = 0usize;
    let mut i = at;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i = string_end(b, i);
                if depth == 0 {
                    return i;
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth == 0 => return i,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            b',' if depth == 0 => return i,
            _ => {}
        }
        i += 1;
    }
    b.len()
}

/// The raw text of a top-level object or array value (`"tls": {...}`), for a caller that
/// reads it with [`number`] or [`string`] in turn.
pub fn object<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    raw(json, key).filter(|v| v.starts_with('{') || v.starts_with('['))
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

    #[test]
    fn skips_nested_objects() {
        let j = r#"{"mode":"echo","tls":{"errors":7,"p50_us":900,"x":[1,{"errors":8}]},"errors":0,"p50_us":48,"s":"{\"errors\":9}"}"#;
        assert_eq!(number(j, "errors"), Some(0.0));
        assert_eq!(number(j, "p50_us"), Some(48.0));
        let tls = object(j, "tls").unwrap();
        assert_eq!(tls, r#"{"errors":7,"p50_us":900,"x":[1,{"errors":8}]}"#);
        assert_eq!(number(tls, "errors"), Some(7.0));
        assert_eq!(number(tls, "p50_us"), Some(900.0));
        assert_eq!(object(j, "mode"), None);
        let j = r#"{"tls":{"handshakes":3},"msgs_per_sec":5.5}"#;
        assert_eq!(number(j, "msgs_per_sec"), Some(5.5));
        assert_eq!(number(j, "handshakes"), None);
    }
}
