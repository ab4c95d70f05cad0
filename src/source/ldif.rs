//! The LDIF source: reads an LDIF export (RFC 2849 content records) and applies the same scopes and filters as a server would.
//!
//! Supported: comments, folded lines, `attr: value`, `attr:: base64`, `version: 1`.
//! Change records and `attr:< URL` values are rejected with the line that holds them.

use std::path::Path;

use base64::Engine;

use super::filter::Filter;
use super::{EntrySink, RawEntry, ReadStats, SourceError};
use crate::config::{GroupsConfig, UsersConfig};
use crate::dn;

/// Parses LDIF text into entries; `path` is only used in messages.
pub fn parse(text: &[u8], path: &str) -> Result<Vec<RawEntry>, SourceError> {
    let fail = |line: usize, message: String| SourceError::Ldif {
        path: path.to_string(),
        line,
        message,
    };
    // Unfold continuation lines, remembering where each logical line started.
    let mut logical: Vec<(usize, Vec<u8>)> = Vec::new();
    for (index, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if let Some(rest) = line.strip_prefix(b" ") {
            match logical.last_mut() {
                Some((_, previous)) if !previous.is_empty() => previous.extend_from_slice(rest),
                _ => {
                    return Err(fail(
                        index + 1,
                        "continuation line with nothing to continue".into(),
                    ));
                }
            }
        } else {
            logical.push((index + 1, line.to_vec()));
        }
    }
    let mut entries = Vec::new();
    let mut current: Option<RawEntry> = None;
    for (number, line) in logical {
        if line.is_empty() {
            entries.extend(current.take());
            continue;
        }
        if line.starts_with(b"#") {
            continue;
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| fail(number, "expected \"attribute: value\"".into()))?;
        let name = String::from_utf8_lossy(&line[..colon])
            .trim()
            .to_ascii_lowercase();
        let rest = &line[colon + 1..];
        let value: Vec<u8> = if let Some(encoded) = rest.strip_prefix(b":") {
            let encoded = String::from_utf8_lossy(encoded);
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|e| fail(number, format!("invalid base64 value for \"{name}\": {e}")))?
        } else if rest.starts_with(b"<") {
            return Err(fail(
                number,
                format!("URL values (\"{name}:<\") are not supported"),
            ));
        } else {
            let trimmed = rest.strip_prefix(b" ").unwrap_or(rest);
            trimmed.to_vec()
        };
        match (&mut current, name.as_str()) {
            (None, "version") => {}
            (None, "dn") => {
                let dn = String::from_utf8(value)
                    .map_err(|_| fail(number, "the DN is not valid UTF-8".into()))?;
                current = Some(RawEntry {
                    dn,
                    ..RawEntry::default()
                });
            }
            (None, _) => return Err(fail(number, format!("expected \"dn:\", found \"{name}:\""))),
            (Some(_), "changetype") => {
                return Err(fail(
                    number,
                    "change records are not supported; export content records".into(),
                ));
            }
            (Some(entry), _) => entry.attrs.entry(name).or_default().push(value),
        }
    }
    entries.extend(current);
    Ok(entries)
}

/// Reads an LDIF file: entries in the users scope become users, those in the groups scope groups.
pub(super) fn read(
    path: &Path,
    users: &UsersConfig,
    groups: &GroupsConfig,
    builder: &mut impl EntrySink,
) -> Result<ReadStats, SourceError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| SourceError::Ldif {
        path: shown.clone(),
        line: 0,
        message: format!("cannot read the file: {e}. Check [ldap] ldif_file"),
    })?;
    let entries = parse(&bytes, &shown)?;
    let scope = |base: &str, filter: &str| {
        let base = dn::normalize(base);
        let filter = Filter::parse(filter);
        move |entry: &RawEntry| {
            dn::is_under(&dn::normalize(&entry.dn), &base)
                && filter.as_ref().is_some_and(|f| f.matches(entry))
        }
    };
    let is_user = scope(&users.base_dn, &users.filter);
    let is_group = scope(&groups.base_dn, &groups.filter);
    let mut stats = ReadStats::default();
    for entry in entries.iter().filter(|e| is_user(e)) {
        builder.add_user(entry)?;
        stats.users += 1;
    }
    for entry in entries.iter().filter(|e| is_group(e)) {
        builder.add_group(entry)?;
        stats.groups += 1;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_folding_base64_and_comments() {
        let text = b"version: 1\n# a comment\ndn: cn=a,dc=x\ncn: a\ndescription: long\n  value\ncn:: w7w=\n\n\ndn: cn=b,dc=x\ncn: b\n";
        let entries = parse(text, "t.ldif").unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].values("description")[0], b"long value");
        assert_eq!(entries[0].values("CN")[1], "ü".as_bytes());
        assert_eq!(entries[1].dn, "cn=b,dc=x");
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse(b"dn: cn=a\ncn: a\nchangetype: add\n", "t.ldif")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("LDIF source t.ldif:3:"), "{err}");
        let err = parse(b"cn: a\n", "t.ldif").unwrap_err().to_string();
        assert!(err.contains("t.ldif:1:"), "{err}");
        assert!(parse(b"dn: cn=a\ncn:: !!!\n", "t.ldif").is_err());
    }
}
