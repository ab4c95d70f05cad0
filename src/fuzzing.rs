//! Entry points of the fuzz targets in `fuzz/` (cargo fuzz, feature `fuzzing`), one per parser that takes outside data; `cargo test` replays their corpus.
//!
//! Each takes any bytes and must not panic (an `Err` is a fine answer). The same functions run
//! under libFuzzer (`scripts/fuzz.sh`) and, on every `cargo test`, over the seed corpus kept in
//! `fuzz/corpus/<target>/`: an input that once crashed a parser is copied there and stays a
//! regression test.
//!
//! BER: ldap3's `lber` parses the bytes a server sends into a `StructureTag`; ldapsync decodes
//! the search entries from that structure itself ([`crate::source::ldap::decode_entry`]), so the
//! `ber` target fuzzes both, on the bytes of a `SearchResultEntry`.

use std::path::Path;

use crate::config::Config;
use crate::dn;
use crate::sinks::SinkSettings;
use crate::source::filter::Filter;
use crate::source::{RawEntry, ldap, ldif};

/// The entry point of a fuzz target: takes any input, panics only on a bug.
pub type Target = fn(&[u8]);

/// Every fuzz target: its name (the `fuzz/fuzz_targets/<name>.rs` binary and the
/// `fuzz/corpus/<name>/` folder) and its entry point.
pub const TARGETS: &[(&str, Target)] = &[
    ("dn", fuzz_dn),
    ("ldif", fuzz_ldif),
    ("filter", fuzz_filter),
    ("guid", fuzz_guid),
    ("config", fuzz_config),
    ("ber", fuzz_ber),
];

/// A DN and a base DN (the text before and after the first newline): normalisation (which must
/// be idempotent), the first RDN's value and the "is under" test.
pub fn fuzz_dn(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (dn, base) = text.split_once('\n').unwrap_or((&text, ""));
    let normalized = dn::normalize(dn);
    assert_eq!(
        dn::normalize(&normalized),
        normalized,
        "normalize is idempotent"
    );
    let _ = dn::first_rdn_value(dn);
    let _ = dn::is_under(&normalized, &dn::normalize(base));
}

/// Any bytes as an LDIF file.
pub fn fuzz_ldif(data: &[u8]) {
    if let Ok(entries) = ldif::parse(data, "fuzz.ldif") {
        for entry in &entries {
            assert!(entry.attrs.keys().all(|k| *k == k.to_ascii_lowercase()));
        }
    }
}

/// A filter (the first line) evaluated against the entries of the LDIF that follows it.
pub fn fuzz_filter(data: &[u8]) {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (text, rest) = data.split_at(split);
    let Some(filter) = Filter::parse(&String::from_utf8_lossy(text)) else {
        return;
    };
    let entries = ldif::parse(rest, "fuzz.ldif").unwrap_or_default();
    for entry in entries.iter().chain([&RawEntry::default()]) {
        let _ = filter.matches(entry);
    }
}

/// Any bytes as an objectGUID (16 bytes decode in the Microsoft byte order) and as an entryUUID.
pub fn fuzz_guid(data: &[u8]) {
    let mut entry = RawEntry::default();
    for attribute in ["objectguid", "entryuuid"] {
        entry.attrs.insert(attribute.into(), vec![data.to_vec()]);
    }
    let guid = entry.source_id("objectGUID");
    if let (Ok(bytes), Some(guid)) = (<[u8; 16]>::try_from(data), &guid) {
        assert_eq!(
            uuid::Uuid::parse_str(guid).map(|u| u.to_bytes_le()),
            Ok(bytes)
        );
    }
    let _ = entry.source_id("entryUUID");
}

/// Any text as a configuration file: parsed and validated; an error names the file.
pub fn fuzz_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::<SinkSettings>::parse(text, Path::new("fuzz.toml")) {
        assert!(e.to_string().starts_with("fuzz.toml"), "{e}");
    }
}

/// Any bytes as the BER of a `SearchResultEntry` from a server.
pub fn fuzz_ber(data: &[u8]) {
    if let Ok((_, tag)) = ldap3::asn1::parse_tag(data) {
        let _ = ldap::decode_entry(ldap3::ResultEntry::new(tag));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of `fuzz/corpus/<target>/` through its target; every target has seeds.
    #[test]
    fn the_fuzz_corpus_replays_without_a_panic() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|f| f.expect("corpus entry").path())
                .collect();
            assert!(!files.is_empty(), "{}: no seeds", dir.display());
            for file in files {
                let data = std::fs::read(&file).expect("read a corpus file");
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{} panics on {}", name, file.display());
            }
        }
    }
}
