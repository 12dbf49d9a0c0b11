//! `If-None-Match` (RFC 9110 §13.1.2), `Accept-Encoding` (RFC 9110 §12.5.3), `Range`
//! (RFC 9110 §14.2) and `Available-Dictionary` (RFC 9842 §2.2) parsing.
//!
//! Both parsers take raw header bytes (which may hold anything a client sends), never
//! panic and never allocate per element: they are on the hot path of every package
//! revalidation and are fuzzed.

use crate::packages::encoding::Encoding;

/// What an `If-None-Match` header asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IfNoneMatch<'a> {
    /// `*`: any current representation matches.
    Any,
    /// The listed entity tags (opaque parts, without quotes or `W/`).
    Tags(Vec<EntityTag<'a>>),
}

/// One entity tag of a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntityTag<'a> {
    pub weak: bool,
    /// The opaque tag without its quotes.
    pub opaque: &'a [u8],
}

/// Parses one `If-None-Match` field value. Elements that do not parse are skipped;
/// an unterminated quoted tag ends the list. Lenient where it costs nothing: a bare
/// (unquoted) token is taken as a tag, and `w/` as `W/`.
pub fn parse_if_none_match(value: &[u8]) -> IfNoneMatch<'_> {
    let mut tags = Vec::new();
    let mut rest = value;
    loop {
        rest = skip_separators(rest);
        if rest.is_empty() {
            break;
        }
        if rest[0] == b'*' {
            let after = skip_ows(&rest[1..]);
            if after.is_empty() || after[0] == b',' {
                return IfNoneMatch::Any;
            }
            // `*` glued to something else: not a valid element; skip it.
            rest = skip_element(rest);
            continue;
        }
        let (weak, body) = match rest {
            [b'W' | b'w', b'/', tail @ ..] => (true, skip_ows(tail)),
            _ => (false, rest),
        };
        if let [b'"', tail @ ..] = body {
            match tail.iter().position(|&b| b == b'"') {
                Some(end) => {
                    tags.push(EntityTag {
                        weak,
                        opaque: &tail[..end],
                    });
                    rest = &tail[end + 1..];
                    // Anything glued after the closing quote up to the next comma is junk.
                    rest = skip_element(rest);
                }
                None => break,
            }
        } else {
            let end = body.iter().position(|&b| b == b',').unwrap_or(body.len());
            let token = trim_ows(&body[..end]);
            if !token.is_empty() && token.iter().all(|&b| is_etagc(b)) {
                tags.push(EntityTag {
                    weak,
                    opaque: token,
                });
            }
            rest = &body[end..];
        }
    }
    IfNoneMatch::Tags(tags)
}

/// True when any of the `If-None-Match` values matches the current entity tag (whose
/// opaque part is `opaque`) by weak comparison, i.e. the server should answer 304.
pub fn if_none_match_matches<'a, I>(values: I, opaque: impl AsRef<[u8]>) -> bool
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let opaque = opaque.as_ref();
    values.into_iter().any(|value| {
        // What a client sends back is the one tag it got: matched before any parsing.
        is_exactly_tag(value, opaque)
            || match parse_if_none_match(value) {
                IfNoneMatch::Any => true,
                IfNoneMatch::Tags(tags) => tags.iter().any(|tag| tag.opaque == opaque),
            }
    })
}

/// True when `value` is exactly `W/"<opaque>"` or `"<opaque>"` (an opaque part without a
/// quote), which parses to that one tag.
fn is_exactly_tag(value: &[u8], opaque: &[u8]) -> bool {
    let quoted = value.strip_prefix(b"W/").unwrap_or(value);
    quoted.len() == opaque.len() + 2
        && quoted.first() == Some(&b'"')
        && quoted.last() == Some(&b'"')
        && &quoted[1..quoted.len() - 1] == opaque
        && !opaque.contains(&b'"')
}

/// Chooses `br` or `gzip` from `Accept-Encoding` values by their q-values (q=0 means
/// "not acceptable"; a coding not listed takes `*`'s q-value, or is not acceptable).
/// On a tie `br` wins (smaller). Anything else, or nothing acceptable: identity.
pub fn negotiate_encoding<'a, I>(values: I) -> Encoding
where
    I: IntoIterator<Item = &'a [u8]>,
{
    // q-values in thousandths; None = not mentioned.
    let mut br: Option<u16> = None;
    let mut gzip: Option<u16> = None;
    let mut star: Option<u16> = None;
    for value in values {
        for element in value.split(|&b| b == b',') {
            let mut params = element.split(|&b| b == b';');
            let coding = trim_ows(params.next().unwrap_or_default());
            if coding.is_empty() {
                continue;
            }
            let mut q = 1000u16;
            for param in params {
                let param = trim_ows(param);
                if let [b'q' | b'Q', rest @ ..] = param {
                    let rest = trim_ows(rest);
                    if let [b'=', value @ ..] = rest {
                        q = parse_qvalue(trim_ows(value)).unwrap_or(0);
                    }
                }
            }
            let slot = if coding.eq_ignore_ascii_case(b"br") {
                &mut br
            } else if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip")
            {
                &mut gzip
            } else if coding == b"*" {
                &mut star
            } else {
                continue;
            };
            // The same coding listed twice: keep the higher preference.
            *slot = Some(slot.map_or(q, |old| old.max(q)));
        }
    }
    let br = br.or(star).unwrap_or(0);
    let gzip = gzip.or(star).unwrap_or(0);
    if br == 0 && gzip == 0 {
        Encoding::Identity
    } else if br >= gzip {
        Encoding::Brotli
    } else {
        Encoding::Gzip
    }
}

/// True when `Accept-Encoding` lists `dcz` with a q-value above 0. Only an explicit
/// `dcz` counts (not `*`): a client that has not announced it cannot hold a dictionary.
pub fn accepts_dcz<'a, I>(values: I) -> bool
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut q: Option<u16> = None;
    for value in values {
        for element in value.split(|&b| b == b',') {
            let mut params = element.split(|&b| b == b';');
            if !trim_ows(params.next().unwrap_or_default()).eq_ignore_ascii_case(b"dcz") {
                continue;
            }
            let mut this = 1000u16;
            for param in params {
                if let [b'q' | b'Q', rest @ ..] = trim_ows(param)
                    && let [b'=', value @ ..] = trim_ows(rest)
                {
                    this = parse_qvalue(trim_ows(value)).unwrap_or(0);
                }
            }
            q = Some(q.map_or(this, |old| old.max(this)));
        }
    }
    q.is_some_and(|q| q > 0)
}

/// `Available-Dictionary: :<base64 of a SHA-256>:` (an RFC 8941 byte sequence) → the
/// 32 digest bytes; anything else → `None` (the request is served without dictionary).
pub fn parse_available_dictionary(value: &[u8]) -> Option<[u8; 32]> {
    use base64::Engine;
    let inner = trim_ows(value).strip_prefix(b":")?.strip_suffix(b":")?;
    // 32 bytes are 44 base64 characters; refuse anything longer before decoding.
    if inner.len() != 44 {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(inner)
        .ok()?;
    bytes.try_into().ok()
}

/// What a `Range` header asks of a representation of `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable single byte range (absent, another unit, several ranges, malformed):
    /// the whole representation is served, as RFC 9110 §14.2 allows.
    Whole,
    /// Bytes `start..=end` (inclusive, within the representation).
    Part { start: u64, end: u64 },
    /// A valid range none of whose bytes exist: `416`.
    Unsatisfiable,
}

/// Parses one `Range` value: `bytes=a-b`, `bytes=a-` or `bytes=-n`.
pub fn parse_range(value: &[u8], len: u64) -> RangeRequest {
    let value = trim_ows(value);
    let Some(eq) = value.iter().position(|&b| b == b'=') else {
        return RangeRequest::Whole;
    };
    if !trim_ows(&value[..eq]).eq_ignore_ascii_case(b"bytes") {
        return RangeRequest::Whole;
    }
    let spec = trim_ows(&value[eq + 1..]);
    if spec.contains(&b',') {
        // Several ranges would need multipart/byteranges; a resuming client sends one.
        return RangeRequest::Whole;
    }
    let Some(dash) = spec.iter().position(|&b| b == b'-') else {
        return RangeRequest::Whole;
    };
    let (first, last) = (trim_ows(&spec[..dash]), trim_ows(&spec[dash + 1..]));
    let number = |s: &[u8]| -> Option<u64> {
        if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(s).ok()?.parse().ok()
    };
    match (first.is_empty(), last.is_empty()) {
        // `-n`: the last n bytes.
        (true, false) => match number(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if len == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Part {
                start: len.saturating_sub(n),
                end: len - 1,
            },
            None => RangeRequest::Whole,
        },
        (false, _) => {
            let Some(start) = number(first) else {
                return RangeRequest::Whole;
            };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match number(last) {
                    Some(end) if end >= start => end,
                    _ => return RangeRequest::Whole,
                }
            };
            if start >= len {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Part {
                    start,
                    end: end.min(len - 1),
                }
            }
        }
        (true, true) => RangeRequest::Whole,
    }
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in thousandths.
/// Lenient: more digits are ignored; anything unparsable is `None`.
fn parse_qvalue(value: &[u8]) -> Option<u16> {
    let (int, frac) = match value.iter().position(|&b| b == b'.') {
        Some(dot) => (&value[..dot], &value[dot + 1..]),
        None => (value, &[][..]),
    };
    let whole: u16 = match int {
        [b'0'] => 0,
        [b'1'] => 1,
        _ => return None,
    };
    if !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths: u16 = 0;
    for (i, &digit) in frac.iter().take(3).enumerate() {
        thousandths += u16::from(digit - b'0') * [100, 10, 1][i];
    }
    Some((whole * 1000 + thousandths).min(1000))
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `etagc = %x21 / %x23-7E / obs-text`
fn is_etagc(b: u8) -> bool {
    b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80
}

fn skip_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_ows(b)).unwrap_or(s.len());
    &s[start..]
}

fn trim_ows(s: &[u8]) -> &[u8] {
    let s = skip_ows(s);
    let end = s.iter().rposition(|&b| !is_ows(b)).map_or(0, |i| i + 1);
    &s[..end]
}

fn skip_separators(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| !(is_ows(b) || b == b','))
        .unwrap_or(s.len());
    &s[start..]
}

/// Skips to the next comma (or the end).
fn skip_element(s: &[u8]) -> &[u8] {
    let end = s.iter().position(|&b| b == b',').unwrap_or(s.len());
    &s[end..]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const H: &str = "fc873d72d04c91ffeaa46adcec080bc90c743feaf188526560aeda94795d11bb";

    fn matches(value: &str) -> bool {
        if_none_match_matches([value.as_bytes()], H)
    }

    #[test]
    fn exact_weak_and_strong_tags_match() {
        assert!(matches(&format!("W/\"{H}\"")));
        assert!(matches(&format!("\"{H}\"")));
        assert!(matches(&format!("w/\"{H}\"")));
        assert!(matches(&format!("  W/\"{H}\"  ")));
    }

    #[test]
    fn lists_match_any_element() {
        assert!(matches(&format!("\"a\", W/\"b\" ,W/\"{H}\"")));
        assert!(matches(&format!("\"x\",\"{H}\"")));
        assert!(matches(&format!(",,  ,\"{H}\",")));
        assert!(!matches("\"a\", W/\"b\""));
        // Commas may appear inside an opaque tag.
        assert!(!matches(&format!("\"a,{H}\"")));
        assert_eq!(
            parse_if_none_match(b"\"a,b\", W/\"c\""),
            IfNoneMatch::Tags(vec![
                EntityTag {
                    weak: false,
                    opaque: b"a,b"
                },
                EntityTag {
                    weak: true,
                    opaque: b"c"
                },
            ])
        );
    }

    #[test]
    fn star_matches_anything() {
        assert!(matches("*"));
        assert!(matches(" * "));
        assert_eq!(parse_if_none_match(b"*"), IfNoneMatch::Any);
        assert!(!matches("*abc"));
    }

    #[test]
    fn the_exact_tag_matches_as_the_parser_would() {
        // The shortcut for a value that is exactly the tag agrees with the parser.
        for (value, opaque, expected) in [
            ("W/\"abc\"", "abc", true),
            ("\"abc\"", "abc", true),
            ("W/\"abd\"", "abc", false),
            ("W/\"abc\"", "ab", false),
            ("\"a\"b\"", "a\"b", false),
        ] {
            assert_eq!(
                if_none_match_matches([value.as_bytes()], opaque),
                expected,
                "{value} against {opaque}"
            );
        }
    }

    #[test]
    fn several_header_lines_are_one_list() {
        let a = b"\"nope\"".as_slice();
        let b = format!("W/\"{H}\"");
        assert!(if_none_match_matches([a, b.as_bytes()], H));
        assert!(!if_none_match_matches([a], H));
        assert!(!if_none_match_matches(std::iter::empty(), H));
    }

    #[test]
    fn non_matching_and_garbage_never_match_or_panic() {
        for value in [
            "",
            " ",
            ",",
            "\"",
            "W/",
            "W/\"",
            "W/\"abc",
            &format!("\"{H}"),
            &format!("W/{H}\""),
            &H[..10],
            "\u{0}\u{1}\"\"",
            "W/W/W/",
            "\"\"",
            "W/\"\"",
            "**",
            "*,",
        ] {
            // `*,` is a valid `*`; everything else must not match.
            if value == "*," {
                assert!(matches(value));
            } else {
                assert!(!matches(value), "{value:?}");
            }
        }
        // Bytes that are not UTF-8 at all.
        assert!(!if_none_match_matches([&[0xff, 0xfe, b'"', 0x80][..]], H));
    }

    #[test]
    fn bare_token_is_taken_leniently() {
        assert!(matches(H));
        assert!(matches(&format!("W/{H}")));
        assert!(matches(&format!("junk, {H}")));
    }

    #[test]
    fn junk_after_a_closing_quote_is_skipped() {
        assert!(matches(&format!("\"a\"xyz, \"{H}\"")));
        assert!(!matches(&format!("\"a\"\"{H}\"")));
    }

    #[test]
    fn exhaustive_short_inputs_never_panic() {
        let alphabet = [b'W', b'/', b'"', b',', b' ', b'*', b'a', 0xff];
        let mut buf = Vec::new();
        for len in 0..=5u32 {
            for n in 0..alphabet.len().pow(len) {
                buf.clear();
                let mut k = n;
                for _ in 0..len {
                    buf.push(alphabet[k % alphabet.len()]);
                    k /= alphabet.len();
                }
                let _ = parse_if_none_match(&buf);
                let _ = if_none_match_matches([buf.as_slice()], "a");
                let _ = negotiate_encoding([buf.as_slice()]);
            }
        }
    }

    fn enc(value: &str) -> Encoding {
        negotiate_encoding([value.as_bytes()])
    }

    #[test]
    fn encoding_negotiation() {
        assert_eq!(negotiate_encoding(std::iter::empty()), Encoding::Identity);
        assert_eq!(enc(""), Encoding::Identity);
        assert_eq!(enc("identity"), Encoding::Identity);
        assert_eq!(enc("gzip"), Encoding::Gzip);
        assert_eq!(enc("br"), Encoding::Brotli);
        assert_eq!(enc("gzip, deflate, br"), Encoding::Brotli);
        assert_eq!(enc("gzip;q=1.0, br;q=0.5"), Encoding::Gzip);
        assert_eq!(enc("br;q=0, gzip"), Encoding::Gzip);
        assert_eq!(enc("gzip;q=0"), Encoding::Identity);
        assert_eq!(enc("gzip; q=0.000"), Encoding::Identity);
        assert_eq!(enc("GZIP ; Q = 0.8"), Encoding::Gzip);
        assert_eq!(enc("*"), Encoding::Brotli);
        assert_eq!(enc("*;q=0.5, br;q=0.1"), Encoding::Gzip);
        assert_eq!(enc("*;q=0"), Encoding::Identity);
        assert_eq!(enc("br;q=0, *"), Encoding::Gzip);
        assert_eq!(enc("deflate, compress"), Encoding::Identity);
        assert_eq!(enc("x-gzip"), Encoding::Gzip);
        assert_eq!(enc("gzip;q=garbage"), Encoding::Identity);
        assert_eq!(enc("gzip;q=2"), Encoding::Identity);
        assert_eq!(enc("br;q=0.0001, gzip;q=0.0009"), Encoding::Identity);
        assert_eq!(
            negotiate_encoding([b"gzip;q=0".as_slice(), b"br".as_slice()]),
            Encoding::Brotli
        );
    }

    #[test]
    fn dcz_must_be_listed() {
        let dcz = |v: &str| accepts_dcz([v.as_bytes()]);
        assert!(dcz("gzip, deflate, br, zstd, dcb, dcz"));
        assert!(dcz("DCZ;q=0.5"));
        assert!(!dcz("dcz;q=0"));
        assert!(!dcz("*"));
        assert!(!dcz("gzip, br"));
        assert!(!dcz("xdcz"));
    }

    #[test]
    fn available_dictionary_is_a_byte_sequence_of_32() {
        let sha = [7u8; 32];
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(sha);
        assert_eq!(
            parse_available_dictionary(format!(":{b64}:").as_bytes()),
            Some(sha)
        );
        assert_eq!(
            parse_available_dictionary(format!(" :{b64}: ").as_bytes()),
            Some(sha)
        );
        for bad in [
            b64.clone(),
            format!(":{b64}"),
            format!(":{}:", &b64[..40]),
            format!(":{b64}AAAA:"),
            ":!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!:".into(),
            String::new(),
        ] {
            assert_eq!(parse_available_dictionary(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn ranges() {
        use RangeRequest::*;
        let r = |v: &str| parse_range(v.as_bytes(), 100);
        assert_eq!(r("bytes=0-9"), Part { start: 0, end: 9 });
        assert_eq!(r("bytes=90-"), Part { start: 90, end: 99 });
        assert_eq!(r("bytes=90-1000"), Part { start: 90, end: 99 });
        assert_eq!(r("bytes=-10"), Part { start: 90, end: 99 });
        assert_eq!(r("bytes=-1000"), Part { start: 0, end: 99 });
        assert_eq!(r("Bytes = 5-5"), Part { start: 5, end: 5 });
        assert_eq!(r("bytes=100-"), Unsatisfiable);
        assert_eq!(r("bytes=100-200"), Unsatisfiable);
        assert_eq!(r("bytes=-0"), Unsatisfiable);
        assert_eq!(parse_range(b"bytes=0-", 0), Unsatisfiable);
        for whole in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=5-4",
            "bytes=a-b",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=99999999999999999999-",
            "bytes=+1-2",
        ] {
            assert_eq!(r(whole), Whole, "{whole:?}");
        }
    }

    #[test]
    fn qvalues() {
        assert_eq!(parse_qvalue(b"1"), Some(1000));
        assert_eq!(parse_qvalue(b"1.000"), Some(1000));
        assert_eq!(parse_qvalue(b"0.5"), Some(500));
        assert_eq!(parse_qvalue(b"0.123456"), Some(123));
        assert_eq!(parse_qvalue(b"0."), Some(0));
        assert_eq!(parse_qvalue(b"1.9"), Some(1000));
        assert_eq!(parse_qvalue(b""), None);
        assert_eq!(parse_qvalue(b"0.x"), None);
        assert_eq!(parse_qvalue(b"-1"), None);
    }
}
