//! The NATS core client protocol (<https://docs.nats.io/reference/reference-protocols/nats-protocol>),
//! the part a client needs: parsing what the server sends (`INFO`, `MSG`, `HMSG`, `PING`,
//! `PONG`, `+OK`, `-ERR`) and writing `CONNECT`, `PUB`, `SUB`, `PING`, `PONG`. No I/O:
//! bytes in, events out; commands are built into buffers.

use bytes::Bytes;
use std::fmt;

/// The longest control line accepted from the server (NATS' own default limit).
pub(crate) const MAX_CONTROL_LINE: usize = 4096;

/// One thing the server said.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ServerOp<'a> {
    /// `INFO {json}`: the server's description (its `max_payload` matters).
    Info(&'a str),
    /// `MSG` or `HMSG` (headers are skipped): a message on `subject` for subscription `sid`.
    Msg {
        subject: &'a str,
        sid: u64,
        payload: &'a [u8],
    },
    Ping,
    Pong,
    Ok,
    /// `-ERR 'text'`: most are fatal (the server closes), some (permissions) are not.
    Err(&'a str),
}

/// Bytes the server sent that do not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProtoError(pub(crate) String);

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NATS protocol: {}", self.0)
    }
}

/// Parses the operation at the front of `buf`: `Ok(None)` until it is complete, else the
/// operation and how many bytes it took. `max_payload` bounds a message.
pub(crate) fn parse(
    buf: &[u8],
    max_payload: usize,
) -> Result<Option<(ServerOp<'_>, usize)>, ProtoError> {
    let Some(eol) = find_crlf(buf, MAX_CONTROL_LINE) else {
        if buf.len() > MAX_CONTROL_LINE {
            return Err(ProtoError(format!("control line over {MAX_CONTROL_LINE} bytes")));
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[..eol])
        .map_err(|_| ProtoError("control line is not UTF-8".into()))?;
    let after = eol + 2;
    let (op, args) = match line.find([' ', '\t']) {
        Some(i) => (&line[..i], line[i + 1..].trim_start()),
        None => (line, ""),
    };
    let simple = |o| Ok(Some((o, after)));
    match op.to_ascii_uppercase().as_str() {
        "PING" => simple(ServerOp::Ping),
        "PONG" => simple(ServerOp::Pong),
        "+OK" => simple(ServerOp::Ok),
        "-ERR" => simple(ServerOp::Err(args.trim().trim_matches('\''))),
        "INFO" => simple(ServerOp::Info(args)),
        "MSG" | "HMSG" => {
            let headers = op.eq_ignore_ascii_case("HMSG");
            let parts: Vec<&str> = args.split_ascii_whitespace().collect();
            // MSG subject sid [reply] len; HMSG subject sid [reply] hdr_len total_len
            let counts = if headers { 2 } else { 1 };
            if parts.len() < 2 + counts || parts.len() > 3 + counts {
                return Err(ProtoError(format!("malformed {op}: {line:?}")));
            }
            let num = |s: &str| {
                s.parse::<usize>().map_err(|_| ProtoError(format!("bad number {s:?} in {op}")))
            };
            let total = num(parts[parts.len() - 1])?;
            let header_len = if headers { num(parts[parts.len() - 2])? } else { 0 };
            if header_len > total {
                return Err(ProtoError(format!("{op} headers longer than the message")));
            }
            if total > max_payload {
                return Err(ProtoError(format!("{op} of {total} bytes over max_payload")));
            }
            let sid = parts[1]
                .parse::<u64>()
                .map_err(|_| ProtoError(format!("bad sid {:?}", parts[1])))?;
            let Some(end) = after.checked_add(total).filter(|e| e.checked_add(2).is_some()) else {
                return Err(ProtoError(format!("{op} length {total} out of range")));
            };
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtoError(format!("{op} payload not followed by CRLF")));
            }
            let payload = &buf[after + header_len..end];
            Ok(Some((ServerOp::Msg { subject: parts[0], sid, payload }, end + 2)))
        }
        _ => Err(ProtoError(format!("unknown operation {op:?}"))),
    }
}

fn find_crlf(buf: &[u8], limit: usize) -> Option<usize> {
    let window = &buf[..buf.len().min(limit + 2)];
    window.windows(2).position(|w| w == b"\r\n")
}

/// `max_payload` from an `INFO` line's JSON (the server's limit on one message), if given.
pub(crate) fn info_max_payload(json: &str) -> Option<usize> {
    let i = json.find("\"max_payload\"")?;
    let rest = json[i + "\"max_payload\"".len()..].trim_start().strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `CONNECT` with our options: no echo of our own publications (a node must not receive
/// its own room messages back), verbose off, pedantic off, headers not needed.
pub(crate) fn connect(name: &str) -> Bytes {
    let name: String =
        name.chars().filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).collect();
    Bytes::from(format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"echo\":false,\"lang\":\"rust\",\
         \"version\":\"servercore\",\"protocol\":1,\"name\":\"{name}\"}}\r\n"
    ))
}

/// `SUB subject sid`.
pub(crate) fn sub(subject: &str, sid: u64) -> Bytes {
    Bytes::from(format!("SUB {subject} {sid}\r\n"))
}

/// `PUB subject len\r\n` + payload + `\r\n`, as one buffer (the payload copied once per
/// message and node, not per member).
pub(crate) fn publish(subject: &str, parts: &[&[u8]]) -> Bytes {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let head = format!("PUB {subject} {len}\r\n");
    let mut v = Vec::with_capacity(head.len() + len + 2);
    v.extend_from_slice(head.as_bytes());
    for p in parts {
        v.extend_from_slice(p);
    }
    v.extend_from_slice(b"\r\n");
    Bytes::from(v)
}

pub(crate) const PING: &[u8] = b"PING\r\n";
pub(crate) const PONG: &[u8] = b"PONG\r\n";

/// Whether `s` is a valid subject token (no spaces, dots, wildcards or control bytes).
pub(crate) fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(mut buf: &[u8]) -> Vec<String> {
        let mut ops = Vec::new();
        while let Some((op, n)) = parse(buf, 1 << 20).unwrap() {
            ops.push(format!("{op:?}"));
            buf = &buf[n..];
        }
        assert!(buf.is_empty(), "left: {buf:?}");
        ops
    }

    #[test]
    fn server_operations() {
        let stream = b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\nPING\r\n+OK\r\n\
            MSG sc.room.chat 1 5\r\nhello\r\nMSG a 2 reply.to 0\r\n\r\n\
            HMSG a 3 12 14\r\nNATS/1.0\r\n\r\nhi\r\n-ERR 'Stale Connection'\r\npong\r\n";
        assert_eq!(
            all(stream),
            vec![
                "Info(\"{\\\"server_id\\\":\\\"x\\\",\\\"max_payload\\\":1048576}\")",
                "Ping",
                "Ok",
                "Msg { subject: \"sc.room.chat\", sid: 1, payload: [104, 101, 108, 108, 111] }",
                "Msg { subject: \"a\", sid: 2, payload: [] }",
                "Msg { subject: \"a\", sid: 3, payload: [104, 105] }",
                "Err(\"Stale Connection\")",
                "Pong",
            ]
        );
        assert_eq!(
            info_max_payload("{\"a\":1, \"max_payload\" : 1048576 ,\"b\":2}"),
            Some(1 << 20)
        );
    }

    #[test]
    fn every_split_waits_for_the_whole_operation() {
        let stream = b"MSG s 1 3\r\nabc\r\nPING\r\n";
        for cut in 0..16 {
            assert_eq!(parse(&stream[..cut], 100).unwrap(), None, "cut at {cut}");
        }
        assert!(parse(&stream[..16], 100).unwrap().is_some());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        for bad in [
            &b"MSG s x 3\r\nabc\r\n"[..],
            b"MSG s 1\r\n",
            b"MSG s 1 2\r\nabc\r\n",
            b"HMSG s 1 5 3\r\nabc\r\n",
            b"WHAT\r\n",
            b"MSG s 1 99999999999999999999\r\n",
        ] {
            assert!(parse(bad, 100).is_err(), "{bad:?}");
        }
        assert!(parse(b"MSG s 1 101\r\n", 100).is_err(), "over max_payload");
        assert!(parse(&[b'x'; 5000], 100).is_err(), "endless control line");
    }

    #[test]
    fn commands() {
        assert_eq!(&publish("sc.room.a", &[b"ab", b"c"])[..], b"PUB sc.room.a 3\r\nabc\r\n");
        assert_eq!(&sub("sc.room.*", 1)[..], b"SUB sc.room.* 1\r\n");
        assert!(std::str::from_utf8(&connect("node 1")).unwrap().contains("\"echo\":false"));
        assert!(
            valid_token("node-1") && !valid_token("a.b") && !valid_token("") && !valid_token("a b")
        );
    }
}
