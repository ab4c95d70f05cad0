//! Distinguished names: a canonical form so that member DNs match entry DNs whatever their case, spacing or escaping.
//!
//! RFC 4514 escapes (`\,`, `\2C`, `\+`, hex-escaped UTF-8) are decoded, attribute types and
//! values are lower-cased, and multi-valued RDNs are sorted.

/// Canonical form of `dn`, suitable as a map key. Never fails: input that is not a valid DN
/// is lower-cased and trimmed of spaces, so it simply matches nothing.
pub fn normalize(dn: &str) -> String {
    let mut out = String::new();
    normalize_into(dn, &mut out);
    out
}

/// [`normalize`] into `out` (cleared first): resolving a million member DNs reuses one buffer
/// instead of allocating a string for each.
pub fn normalize_into(dn: &str, out: &mut String) {
    out.clear();
    // Most DNs need no unescaping or re-escaping: lower-casing them is the canonical form.
    if !is_plain(dn) {
        out.push_str(&normalize_parsed(dn));
    } else if dn.is_ascii() {
        out.push_str(dn);
        out.make_ascii_lowercase();
    } else {
        out.push_str(&dn.to_lowercase());
    }
}

fn normalize_parsed(dn: &str) -> String {
    match parse(dn) {
        Some(rdns) => rdns
            .into_iter()
            .map(|mut avas| {
                avas.sort();
                avas.into_iter()
                    .map(|(attr, value)| format!("{attr}={}", escape_value(&value)))
                    .collect::<Vec<_>>()
                    .join("+")
            })
            .collect::<Vec<_>>()
            .join(","),
        None => dn.trim_matches(' ').to_lowercase(),
    }
}

/// True when `dn` has one `=` per RDN and nothing that parsing would change: no escapes,
/// multi-valued RDNs, quotes, `#`, `;`, `<`, `>`, and no spaces around separators.
fn is_plain(dn: &str) -> bool {
    let bytes = dn.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if first == b' ' || last == b' ' {
        return false;
    }
    let mut equals_in_rdn = 0;
    for (i, &c) in bytes.iter().enumerate() {
        match c {
            b'\\' | b'+' | b'"' | b'#' | b';' | b'<' | b'>' => return false,
            b'=' | b',' => {
                let spaced = bytes.get(i + 1) == Some(&b' ') || (i > 0 && bytes[i - 1] == b' ');
                if spaced {
                    return false;
                }
                if c == b'=' {
                    equals_in_rdn += 1;
                    if equals_in_rdn > 1 {
                        return false;
                    }
                } else {
                    if equals_in_rdn != 1 {
                        return false;
                    }
                    equals_in_rdn = 0;
                }
            }
            _ => {}
        }
    }
    equals_in_rdn == 1
}

/// True when `dn` is `base` or lies below it.
pub fn is_under(normalized_dn: &str, normalized_base: &str) -> bool {
    normalized_base.is_empty()
        || normalized_dn == normalized_base
        || normalized_dn.ends_with(&format!(",{normalized_base}"))
}

/// The value of the first RDN (`cn=Admins,ou=x` → `Admins`), unescaped, case kept.
pub fn first_rdn_value(dn: &str) -> Option<String> {
    parse_preserving_case(dn)?
        .into_iter()
        .next()?
        .into_iter()
        .next()
        .map(|(_, v)| v)
}

type Rdn = Vec<(String, String)>;

fn parse(dn: &str) -> Option<Vec<Rdn>> {
    Some(
        parse_preserving_case(dn)?
            .into_iter()
            .map(|rdn| {
                rdn.into_iter()
                    .map(|(a, v)| (a.to_lowercase(), v.to_lowercase()))
                    .collect()
            })
            .collect(),
    )
}

fn parse_preserving_case(dn: &str) -> Option<Vec<Rdn>> {
    // RFC 4514 allows spaces (not other whitespace) around a DN; a tab is part of a value.
    // Only leading spaces are trimmed here: a trailing one may be escaped (`cn=a\ `, which
    // `escape_value` writes), and the value loop below drops the unescaped ones.
    let bytes = dn.trim_start_matches(' ').as_bytes();
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let mut rdns = Vec::new();
    let mut rdn: Rdn = Vec::new();
    let mut i = 0;
    loop {
        // attribute type
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' {
            i += 1;
        }
        if i >= bytes.len() {
            return None;
        }
        let attr = std::str::from_utf8(&bytes[start..i])
            .ok()?
            .trim_matches(' ')
            .to_string();
        if attr.is_empty() {
            return None;
        }
        i += 1;
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        // value
        let mut value: Vec<u8> = Vec::new();
        let mut trailing_unescaped_spaces = 0usize;
        if i < bytes.len() && bytes[i] == b'#' {
            // hex-encoded BER value: keep its text form
            while i < bytes.len() && bytes[i] != b',' && bytes[i] != b'+' {
                trailing_unescaped_spaces = if bytes[i] == b' ' {
                    trailing_unescaped_spaces + 1
                } else {
                    0
                };
                value.push(bytes[i]);
                i += 1;
            }
        } else {
            while i < bytes.len() && bytes[i] != b',' && bytes[i] != b'+' && bytes[i] != b';' {
                if bytes[i] == b'\\' {
                    i += 1;
                    if i >= bytes.len() {
                        return None;
                    }
                    if i + 1 < bytes.len()
                        && bytes[i].is_ascii_hexdigit()
                        && bytes[i + 1].is_ascii_hexdigit()
                    {
                        let hex = std::str::from_utf8(&bytes[i..i + 2]).ok()?;
                        value.push(u8::from_str_radix(hex, 16).ok()?);
                        i += 2;
                    } else {
                        value.push(bytes[i]);
                        i += 1;
                    }
                    trailing_unescaped_spaces = 0;
                } else {
                    trailing_unescaped_spaces = if bytes[i] == b' ' {
                        trailing_unescaped_spaces + 1
                    } else {
                        0
                    };
                    value.push(bytes[i]);
                    i += 1;
                }
            }
        }
        value.truncate(value.len() - trailing_unescaped_spaces);
        let value = String::from_utf8(value).ok()?;
        rdn.push((attr, value));
        if i >= bytes.len() {
            rdns.push(rdn);
            return Some(rdns);
        }
        if bytes[i] == b'+' {
            i += 1;
        } else {
            rdns.push(std::mem::take(&mut rdn));
            i += 1;
        }
    }
}

fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (index, c) in value.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' if index == 0 => out.push_str("\\#"),
            ' ' if index == 0 || index == last => out.push_str("\\ "),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_spacing_and_escapes_normalize_alike() {
        let a = normalize("CN=Smith\\, John,OU=People,DC=Example,DC=com");
        let b = normalize("cn=smith\\2C john, ou=people ,dc=example,dc=com");
        assert_eq!(a, b);
        assert_eq!(a, "cn=smith\\, john,ou=people,dc=example,dc=com");
    }

    #[test]
    fn hex_escaped_utf8_equals_literal_utf8() {
        assert_eq!(
            normalize("cn=J\\C3\\BCrgen,dc=example"),
            normalize("CN=JÜRGEN,DC=EXAMPLE")
        );
    }

    #[test]
    fn multi_valued_rdn_is_order_independent() {
        assert_eq!(normalize("uid=a+cn=b,dc=x"), normalize("cn=B+uid=A,dc=x"));
    }

    #[test]
    fn first_rdn_value_unescapes_and_keeps_case() {
        assert_eq!(
            first_rdn_value("cn=Sales\\, EMEA,ou=Groups").as_deref(),
            Some("Sales, EMEA")
        );
    }

    #[test]
    fn is_under_respects_rdn_boundaries() {
        let base = normalize("ou=People,dc=example,dc=com");
        assert!(is_under(
            &normalize("uid=a,ou=people,dc=example,dc=com"),
            &base
        ));
        assert!(!is_under(
            &normalize("uid=a,ou=xpeople,dc=example,dc=com"),
            &base
        ));
    }

    #[test]
    fn the_plain_fast_path_agrees_with_parsing() {
        for dn in [
            "uid=Alice,ou=People,dc=Example,dc=com",
            "cn=John Smith,ou=people,dc=x",
            "CN=Jürgen,DC=x",
            "cn=,dc=x",
            "cn=a=b,dc=x",
            "cn=a ,dc=x",
            "cn= a,dc=x",
            "cn=#a,dc=x",
            "cn=a,dc=x ",
            "uid=a+cn=b,dc=x",
            "cn=Smith\\, John,dc=x",
            "dc=x,",
            "plain",
        ] {
            assert_eq!(normalize(dn), normalize_parsed(dn), "{dn}");
        }
    }

    proptest::proptest! {
        #[test]
        fn fast_path_matches_parsing_for_any_input(dn in "[a-zA-Z=, +\\\\#;\"Üé0-9]{0,24}") {
            proptest::prop_assert_eq!(normalize(&dn), normalize_parsed(&dn));
        }
    }

    #[test]
    fn an_escaped_trailing_space_survives_normalizing_twice() {
        // Found by the dn fuzz target: trimming the whole DN first ate the escaped space.
        for dn in [
            "cn=Rui  \\   ",
            "cn=a\\ ",
            "cn=#ab  ,dc=x",
            "  cn=a  ,dc=x  ",
        ] {
            let once = normalize(dn);
            assert_eq!(normalize(&once), once, "{dn:?}");
        }
        assert_eq!(normalize("cn=Rui  \\   "), "cn=rui  \\ ");
        assert_eq!(normalize("cn=#ab  ,dc=x"), "cn=\\#ab,dc=x");
    }

    #[test]
    fn garbage_does_not_panic() {
        for s in ["", "=", "cn", "cn=\\", "cn=a,,", "\\zz=1", "cn=\\C3"] {
            let _ = normalize(s);
        }
    }
}
