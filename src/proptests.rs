//! Bounded property tests ("fuzzing" in the normal test suite) of the code that takes outside data: DN parsing, the LDIF reader, the filter evaluator, GUID decoding, search entries from BER, the configuration parser, the secret scrubber and the output escaping.
//!
//! Each property runs a fixed number of generated cases (proptest's default 256, fewer for the
//! slower ones), so `cargo test` stays quick; proptest keeps failing cases in
//! `proptest-regressions/` as the corpus to replay.

use std::path::Path;

use proptest::prelude::*;

use crate::config::Config;
use crate::dn;
use crate::report::escape_controls;
use crate::secret::{Redactor, Secret};
use crate::sinks::SinkSettings;
use crate::source::filter::Filter;
use crate::source::incremental::tests::tlv;
use crate::source::incremental::{
    EntryState, decode_sync_done, decode_sync_info, decode_sync_state,
};
use crate::source::{RawEntry, ldap, ldif};

/// The BER of a SearchResultEntry (`[APPLICATION 4] { objectName, attributes }`).
fn search_entry_ber(dn: &[u8], attrs: &[(String, Vec<Vec<u8>>)]) -> Vec<u8> {
    let attributes: Vec<u8> = attrs
        .iter()
        .flat_map(|(name, values)| {
            let set: Vec<u8> = values.iter().flat_map(|v| tlv(0x04, v)).collect();
            tlv(
                0x30,
                &[tlv(0x04, name.as_bytes()), tlv(0x31, &set)].concat(),
            )
        })
        .collect();
    tlv(0x64, &[tlv(0x04, dn), tlv(0x30, &attributes)].concat())
}

/// ldap3's lber parses the bytes, ldapsync decodes the entry from the parsed structure.
fn decode_ber(bytes: &[u8]) -> Option<RawEntry> {
    let (_, tag) = ldap3::asn1::parse_tag(bytes).ok()?;
    ldap::decode_entry(ldap3::ResultEntry::new(tag))
}

/// LDIF-looking lines: the parser's interesting cases are near the grammar, not random bytes.
fn ldif_line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("version: 1".to_string()),
        "dn: [a-zA-Z=,\\\\ ]{0,20}".prop_map(|s| s),
        "dn:: [A-Za-z0-9+/=]{0,16}".prop_map(|s| s),
        "[a-zA-Z]{1,8}: [ -~]{0,16}".prop_map(|s| s),
        "[a-zA-Z]{1,8}:: [A-Za-z0-9+/=]{0,16}".prop_map(|s| s),
        "[a-zA-Z]{1,8}:< file:///[a-z]{1,8}".prop_map(|s| s),
        " [ -~]{0,12}".prop_map(|s| s),
        "#[ -~]{0,12}".prop_map(|s| s),
        "changetype: (add|modify|delete)".prop_map(|s| s),
        "[ -~]{0,24}".prop_map(|s| s),
    ]
}

fn entry(attrs: Vec<(String, Vec<Vec<u8>>)>) -> RawEntry {
    RawEntry {
        dn: "cn=x,dc=example,dc=com".into(),
        attrs: attrs
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect(),
    }
}

proptest! {
    #[test]
    fn dn_functions_take_any_text(dn in "\\PC{0,48}", base in "\\PC{0,24}") {
        let normalized = dn::normalize(&dn);
        let _ = dn::first_rdn_value(&dn);
        let _ = dn::is_under(&normalized, &dn::normalize(&base));
        prop_assert_eq!(dn::normalize(&normalized), normalized.clone(), "normalize is idempotent");
    }

    #[test]
    fn ldif_parser_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = ldif::parse(&bytes, "fuzz.ldif");
    }

    #[test]
    fn ldif_parser_takes_any_near_ldif_text(lines in proptest::collection::vec(ldif_line(), 0..24)) {
        let text = lines.join("\n");
        if let Ok(entries) = ldif::parse(text.as_bytes(), "fuzz.ldif") {
            for entry in entries {
                prop_assert!(entry.attrs.keys().all(|k| *k == k.to_ascii_lowercase()));
            }
        }
    }

    #[test]
    fn filters_parse_and_evaluate_without_panicking(
        text in "[()&|!=*<>~:a-zA-Z0-9\\\\ ]{0,40}",
        attrs in proptest::collection::vec(("[a-zA-Z]{1,6}", proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..8), 0..3)), 0..4),
    ) {
        if let Some(filter) = Filter::parse(&text) {
            let _ = filter.matches(&entry(attrs));
        }
    }

    #[test]
    fn an_equality_filter_matches_exactly_the_entries_holding_the_value(
        attr in "[a-z]{1,6}",
        value in "[a-zA-Z0-9]{1,8}",
        other in "[a-zA-Z0-9]{1,8}",
    ) {
        let filter = Filter::parse(&format!("({attr}={value})")).unwrap();
        prop_assert!(filter.matches(&entry(vec![(attr.clone(), vec![value.to_uppercase().into_bytes()])])));
        let holds_other = entry(vec![(attr.clone(), vec![other.clone().into_bytes()])]);
        prop_assert_eq!(filter.matches(&holds_other), other.eq_ignore_ascii_case(&value));
        let negated = Filter::parse(&format!("(!({attr}={value}))")).unwrap();
        prop_assert_eq!(negated.matches(&holds_other), !other.eq_ignore_ascii_case(&value));
    }

    #[test]
    fn object_guids_decode_in_the_microsoft_byte_order(bytes in proptest::array::uniform16(any::<u8>())) {
        let e = entry(vec![("objectGUID".into(), vec![bytes.to_vec()])]);
        let id = e.source_id("objectGUID").unwrap();
        let parsed = uuid::Uuid::parse_str(&id).unwrap();
        prop_assert_eq!(parsed.to_bytes_le(), bytes);
        prop_assert_eq!(id.clone(), id.to_lowercase());
    }

    #[test]
    fn ids_of_any_length_and_bytes_decode(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
        let e = entry(vec![("objectGUID".into(), vec![bytes.clone()]), ("entryUUID".into(), vec![bytes])]);
        let _ = e.source_id("objectGUID");
        let _ = e.source_id("entryUUID");
    }

    #[test]
    fn search_entries_decode_from_their_ber(
        dn in proptest::collection::vec(any::<u8>(), 0..40),
        attrs in proptest::collection::btree_map("[a-z;=0-9-]{1,12}", proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..4), 0..5),
    ) {
        let attrs: Vec<(String, Vec<Vec<u8>>)> = attrs.into_iter().collect();
        let entry = decode_ber(&search_entry_ber(&dn, &attrs));
        let entry = entry.expect("a well-formed entry decodes");
        prop_assert_eq!(&entry.dn, &String::from_utf8_lossy(&dn).into_owned());
        for (name, values) in &attrs {
            prop_assert_eq!(entry.values(name), values.as_slice());
        }
    }

    #[test]
    fn any_bytes_as_a_search_entry_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_ber(&bytes);
    }

    #[test]
    fn scrubbed_text_never_holds_a_configured_secret(
        secret in "[!-~]{4,24}",
        before in "\\PC{0,40}",
        after in "\\PC{0,40}",
    ) {
        let redactor = Redactor::new(&[Secret::new(secret.clone())]);
        let scrubbed = redactor.scrub(&format!("{before}{secret}{after}"));
        prop_assert!(!scrubbed.contains(&secret), "{:?}", scrubbed);
        let bearer = redactor.scrub(&format!("{before} Authorization: Bearer {secret}"));
        prop_assert!(!bearer.contains(&secret), "{:?}", bearer);
    }

    #[test]
    fn escaped_output_has_no_control_characters(text in "\\PC{0,32}|[\\x00-\\x1f\\x7f-\\u{9f}a-z]{0,32}") {
        prop_assert!(!escape_controls(&text).chars().any(char::is_control));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn config_parser_takes_any_text(text in "\\PC{0,200}") {
        let _ = Config::<SinkSettings>::parse(&text, Path::new("fuzz.toml"));
    }

    #[test]
    fn config_parser_takes_any_edit_of_the_example(
        line in 0usize..400,
        replacement in prop_oneof![Just(String::new()), "[a-z_]{1,12} = \"[ -~]{0,12}\"", "[a-z_]{1,12} = [0-9-]{1,6}", "\\[\\[?[a-z]{1,8}\\]\\]?", "[ -~]{0,30}"],
    ) {
        let example = include_str!("../config.example.toml");
        let mut lines: Vec<&str> = example.lines().collect();
        let at = line % lines.len().max(1);
        lines[at] = replacement.as_str();
        let text = lines.join("\n");
        if let Err(e) = Config::<SinkSettings>::parse(&text, Path::new("config.toml")) {
            let message = e.to_string();
            prop_assert!(message.starts_with("config.toml"), "{}", message);
        }
    }
}

proptest! {
    /// The syncrepl controls and syncInfo messages come from the server: any bytes decode to
    /// a value or to `None`, never a panic.
    #[test]
    fn sync_control_decoders_take_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
        let _ = decode_sync_state(&bytes);
        let _ = decode_sync_done(&bytes);
        let _ = decode_sync_info(&bytes);
    }

    /// Well-formed values decode to what was encoded, and every truncation of them is refused
    /// (nor does a corrupted length octet panic).
    #[test]
    fn sync_state_round_trips_and_truncations_are_refused(
        state in 0u8..4,
        uuid in proptest::array::uniform16(any::<u8>()),
        cookie in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
        flip in any::<(usize, u8)>(),
    ) {
        let mut fields = [tlv(0x0a, &[state]), tlv(0x04, &uuid)].concat();
        if let Some(c) = &cookie {
            fields.extend(tlv(0x04, c));
        }
        let value = tlv(0x30, &fields);
        let decoded = decode_sync_state(&value).expect("a well-formed syncStateValue decodes");
        prop_assert_eq!(decoded.uuid, uuid);
        prop_assert_eq!(&decoded.cookie, &cookie);
        let expected = [EntryState::Present, EntryState::Add, EntryState::Modify, EntryState::Delete];
        prop_assert_eq!(decoded.state, expected[usize::from(state)]);
        for cut in 0..value.len() {
            prop_assert!(decode_sync_state(&value[..cut]).is_none());
        }
        let mut corrupted = value.clone();
        let at = flip.0 % corrupted.len();
        corrupted[at] ^= flip.1;
        let _ = decode_sync_state(&corrupted);
        let _ = decode_sync_info(&corrupted);
    }
}
