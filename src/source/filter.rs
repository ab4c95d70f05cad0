//! Evaluates an LDAP search filter (parsed by ldap3) against an entry, for the LDIF source.
//!
//! Matching is case-insensitive, which is right for the attributes a group sync filters on
//! (objectClass, cn, ou …). Extensible matches are not supported and match nothing.

use ldap3::asn1::{ASNTag, PL, StructureTag};

use super::RawEntry;

/// A parsed filter ready to be evaluated many times.
pub struct Filter(StructureTag);

impl Filter {
    pub fn parse(text: &str) -> Option<Filter> {
        ldap3::parse_filter(text)
            .ok()
            .map(|tag| Filter(tag.into_structure()))
    }

    pub fn matches(&self, entry: &RawEntry) -> bool {
        eval(&self.0, entry)
    }
}

fn eval(tag: &StructureTag, entry: &RawEntry) -> bool {
    match (tag.id, &tag.payload) {
        (0, PL::C(children)) => children.iter().all(|c| eval(c, entry)),
        (1, PL::C(children)) => children.iter().any(|c| eval(c, entry)),
        (2, PL::C(children)) => children.first().is_some_and(|c| !eval(c, entry)),
        (3 | 8, PL::C(pair)) => compare(pair, entry, |v, a| v == a),
        (5, PL::C(pair)) => compare(pair, entry, |v, a| v >= a),
        (6, PL::C(pair)) => compare(pair, entry, |v, a| v <= a),
        (7, PL::P(attribute)) => {
            let name = String::from_utf8_lossy(attribute);
            !entry.values(&name).is_empty()
        }
        (4, PL::C(parts)) => substring(parts, entry),
        _ => false,
    }
}

fn primitive(tag: &StructureTag) -> Option<String> {
    match &tag.payload {
        PL::P(bytes) => Some(String::from_utf8_lossy(bytes).to_lowercase()),
        PL::C(_) => None,
    }
}

fn compare(pair: &[StructureTag], entry: &RawEntry, test: impl Fn(&str, &str) -> bool) -> bool {
    let (Some(attribute), Some(asserted)) = (
        pair.first().and_then(primitive),
        pair.get(1).and_then(primitive),
    ) else {
        return false;
    };
    entry
        .values(&attribute)
        .iter()
        .any(|v| test(&String::from_utf8_lossy(v).to_lowercase(), &asserted))
}

fn substring(parts: &[StructureTag], entry: &RawEntry) -> bool {
    let Some(attribute) = parts.first().and_then(primitive) else {
        return false;
    };
    let Some(PL::C(pieces)) = parts.get(1).map(|t| &t.payload) else {
        return false;
    };
    entry.values(&attribute).iter().any(|value| {
        let value = String::from_utf8_lossy(value).to_lowercase();
        let mut rest = value.as_str();
        for piece in pieces {
            let Some(text) = primitive(piece) else {
                return false;
            };
            match piece.id {
                0 => match rest.strip_prefix(text.as_str()) {
                    Some(r) => rest = r,
                    None => return false,
                },
                1 => match rest.find(text.as_str()) {
                    Some(pos) => rest = &rest[pos + text.len()..],
                    None => return false,
                },
                _ => return rest.ends_with(text.as_str()),
            }
        }
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> RawEntry {
        let mut e = RawEntry::default();
        e.attrs.insert(
            "objectclass".into(),
            vec![b"top".to_vec(), b"groupOfNames".to_vec()],
        );
        e.attrs
            .insert("cn".into(), vec![b"Engineering-EMEA".to_vec()]);
        e
    }

    #[test]
    fn boolean_equality_presence_and_substrings() {
        let e = entry();
        for (filter, expected) in [
            ("(objectClass=groupofnames)", true),
            ("(objectClass=posixGroup)", false),
            ("(|(objectClass=posixGroup)(cn=*))", true),
            (
                "(&(objectClass=groupOfNames)(!(cn=engineering-emea)))",
                false,
            ),
            ("(cn=eng*emea)", true),
            ("(cn=*-EMEA)", true),
            ("(cn=*apac)", false),
            ("(description=*)", false),
        ] {
            assert_eq!(
                Filter::parse(filter).unwrap().matches(&e),
                expected,
                "{filter}"
            );
        }
    }
}
