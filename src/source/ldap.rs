//! The LDAP source: connect (ldap://, StartTLS, ldaps:// with a CA file), bind, paged searches, AD ranged retrieval.
//!
//! Entries are decoded from the BER structure without ldap3's panicking `SearchEntry::construct`,
//! so a non-UTF-8 DN or value can never take the process down. Continuation references
//! (searchResRef, e.g. AD's DomainDnsZones) are skipped and counted; a referral *result* or any
//! other non-success result code fails the read.

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;
use std::time::Duration;

use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::asn1::{PL, StructureTag};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, ResultEntry, Scope};

use super::tls::{certificate_name_error, client_config, native_roots};
use super::{
    EntrySink, RawEntry, ReadStats, ResultCode, SkippedReferences, SourceError, member_attributes,
};
use crate::config::{GroupsConfig, LdapConfig, UsersConfig};

/// LDAP result codes that mean "success" for a search.
pub(super) const RC_SUCCESS: u32 = 0;
const RC_REFERRAL: u32 = 10;

/// Opens a connection and binds; used by the read and by `check --connect`.
pub async fn connect(ldap_config: &LdapConfig) -> Result<Ldap, SourceError> {
    let url = ldap_config.url.clone().unwrap_or_default();
    let settings = settings(ldap_config)?;
    let (connection, mut ldap) = LdapConnAsync::with_settings(settings, &url).await.map_err(
        |e| match certificate_name_error(&e) {
            Some(problem) => SourceError::CertificateName {
                host: host_of(&url).to_string(),
                url: url.clone(),
                problem,
            },
            None => SourceError::Connect {
                url: url.clone(),
                message: e.to_string(),
            },
        },
    )?;
    tokio::spawn(async move {
        if let Err(e) = connection.drive().await {
            tracing::debug!(error = %e, "LDAP connection ended");
        }
    });
    if let Some(bind_dn) = &ldap_config.bind_dn {
        let password = ldap_config.bind_password()?;
        let result = ldap
            .with_timeout(Duration::from_secs(ldap_config.timeout_secs))
            .simple_bind(bind_dn, password.as_ref().map(|p| p.expose()).unwrap_or(""))
            .await
            .map_err(|e| SourceError::Connect {
                url: url.clone(),
                message: e.to_string(),
            })?;
        if result.rc != RC_SUCCESS {
            return Err(SourceError::Bind {
                dn: bind_dn.clone(),
                code: ResultCode(result.rc),
                text: result.text,
            });
        }
    }
    Ok(ldap)
}

fn settings(config: &LdapConfig) -> Result<LdapConnSettings, SourceError> {
    let mut settings = LdapConnSettings::new()
        .set_conn_timeout(Duration::from_secs(config.timeout_secs))
        .set_starttls(config.starttls)
        .set_no_tls_verify(config.danger_skip_tls_verify);
    let uses_tls = config.starttls
        || config
            .url
            .as_deref()
            .is_some_and(|url| url.to_ascii_lowercase().starts_with("ldaps://"));
    // Every TLS connection gets our verifier (the clear no-subjectAltName error, the opt-in
    // CN fallback); a CA file is loaded, and so checked, even for a URL without TLS.
    if !config.danger_skip_tls_verify && (uses_tls || config.ca_file.is_some()) {
        let roots = match &config.ca_file {
            Some(ca_file) => ca_roots(ca_file)?,
            None => native_roots(),
        };
        let tls = client_config(roots, config.tls_cn_fallback).map_err(|message| {
            SourceError::Connect {
                url: config.url.clone().unwrap_or_default(),
                message,
            }
        })?;
        settings = settings.set_config(Arc::new(tls));
    }
    Ok(settings)
}

fn ca_roots(ca_file: &std::path::Path) -> Result<rustls::RootCertStore, SourceError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let fail = |message: String| SourceError::CaFile {
        path: ca_file.display().to_string(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file).map_err(|e| fail(e.to_string()))?;
    for cert in certs {
        let cert = cert.map_err(|e| fail(e.to_string()))?;
        roots.add(cert).map_err(|e| fail(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail("no PEM certificate found".into()));
    }
    Ok(roots)
}

/// The host of an `ldap[s]://host[:port]/…` URL (an IPv6 literal without its brackets).
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.split(':').next().unwrap_or(authority),
    }
}

/// Reads users, then groups, into `builder`.
pub(super) async fn read(
    config: &LdapConfig,
    users: &UsersConfig,
    groups: &GroupsConfig,
    builder: &mut impl EntrySink,
) -> Result<ReadStats, SourceError> {
    let mut ldap = connect(config).await?;
    let mut stats = ReadStats::default();
    let user_attrs = user_attributes(users, groups);
    let mut failure = None;
    let skipped = search(
        &mut ldap,
        config,
        "users",
        &users.base_dn,
        &users.filter,
        user_attrs,
        |entry| {
            stats.users += 1;
            builder.take_user(entry)
        },
        &mut failure,
    )
    .await?;
    stats.continuation_references.extend(skipped);
    tracing::debug!(users = stats.users, "users read");
    let member_attributes: Vec<String> = member_attributes(groups)
        .iter()
        .map(|a| a.to_ascii_lowercase())
        .collect();
    let group_attrs = group_attributes(groups);
    let mut ranged: Vec<RawEntry> = Vec::new();
    let skipped = search(
        &mut ldap,
        config,
        "groups",
        &groups.base_dn,
        &groups.filter,
        group_attrs,
        |entry| {
            stats.groups += 1;
            if entry.attrs.keys().any(|k| k.contains(";range=")) {
                ranged.push(entry);
                Ok(())
            } else {
                builder.take_group(entry)
            }
        },
        &mut failure,
    )
    .await?;
    stats.continuation_references.extend(skipped);
    let timeout = Duration::from_secs(config.timeout_secs);
    for mut entry in ranged {
        complete_member_ranges(&mut ldap, timeout, &mut entry, &member_attributes).await?;
        builder.take_group(entry)?;
    }
    let _ = ldap.unbind().await;
    Ok(stats)
}

/// The attributes a read asks for on users (the incremental read asks for the same).
pub(super) fn user_attributes(users: &UsersConfig, groups: &GroupsConfig) -> Vec<String> {
    let mut attrs = vec![
        users.id_attribute.clone(),
        users.username_attribute.clone(),
        users.email_attribute.clone(),
    ];
    if users.exclude_disabled {
        attrs.push("userAccountControl".into());
    }
    if groups.ad_primary_group {
        attrs.extend(["objectSid".into(), "primaryGroupID".into()]);
    }
    attrs
}

/// The attributes a read asks for on groups (the incremental read asks for the same).
pub(super) fn group_attributes(groups: &GroupsConfig) -> Vec<String> {
    let mut attrs = vec![
        groups.id_attribute.clone(),
        groups.name_attribute.clone(),
        groups.description_attribute.clone(),
    ];
    attrs.extend(
        member_attributes(groups)
            .iter()
            .map(|a| a.to_ascii_lowercase()),
    );
    if groups.ad_primary_group {
        attrs.push("objectSid".into());
    }
    attrs
}

/// Runs one paged subtree search, feeding decoded entries to `each`.
/// Returns the continuation references skipped, if any.
#[allow(clippy::too_many_arguments)]
pub(super) async fn search(
    ldap: &mut Ldap,
    config: &LdapConfig,
    section: &'static str,
    base: &str,
    filter: &str,
    attrs: Vec<String>,
    mut each: impl FnMut(RawEntry) -> Result<(), SourceError>,
    failure: &mut Option<SourceError>,
) -> Result<Option<SkippedReferences>, SourceError> {
    let search_error = |message: String| SourceError::Search {
        base: base.to_string(),
        filter: filter.to_string(),
        message,
    };
    tracing::debug!(
        "equivalent: ldapsearch -H {} -b {base:?} -E pr={}/noprompt {filter:?} {}",
        config.url.as_deref().unwrap_or(""),
        config.page_size,
        attrs.join(" ")
    );
    let adapters: Vec<Box<dyn Adapter<'_, String, Vec<String>>>> = vec![
        Box::new(EntriesOnly::new()),
        Box::new(PagedResults::new(config.page_size)),
    ];
    let mut stream = ldap
        .with_timeout(Duration::from_secs(config.timeout_secs))
        .streaming_search_with(adapters, base, Scope::Subtree, filter, attrs)
        .await
        .map_err(|e| search_error(e.to_string()))?;
    loop {
        match stream.next().await {
            Ok(Some(entry)) => {
                if failure.is_some() {
                    continue;
                }
                match decode_entry(entry) {
                    Some(raw) => {
                        if let Err(e) = each(raw) {
                            *failure = Some(e);
                        }
                    }
                    None => {
                        *failure = Some(search_error(
                            "the server sent an entry that could not be decoded".into(),
                        ))
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = stream.finish().await;
                return Err(search_error(e.to_string()));
            }
        }
    }
    let result = stream.finish().await;
    if let Some(e) = failure.take() {
        return Err(e);
    }
    if result.rc == RC_REFERRAL {
        return Err(SourceError::Referral {
            base: base.to_string(),
            section,
            referrals: result.refs.join(", "),
        });
    }
    if result.rc != RC_SUCCESS {
        return Err(SourceError::SearchResult {
            base: base.to_string(),
            filter: filter.to_string(),
            code: ResultCode(result.rc),
            text: result.text,
        });
    }
    if result.refs.is_empty() {
        return Ok(None);
    }
    tracing::info!(
        base,
        count = result.refs.len(),
        refs = %result.refs.join(", "),
        "skipped continuation references (entries in other naming contexts are not read)"
    );
    Ok(Some(SkippedReferences {
        base: base.to_string(),
        urls: result.refs,
    }))
}

/// `member;range=0-1499` is a range of `member`.
fn is_range_of(key: &str, attribute: &str) -> bool {
    key.strip_prefix(attribute)
        .is_some_and(|rest| rest.starts_with(";range="))
}

/// Parses `member;range=1500-2999` → (1500, Some(2999)); `…-*` → (start, None).
fn parse_range(key: &str) -> Option<(u64, Option<u64>)> {
    let range = key.split(";range=").nth(1)?;
    let (start, end) = range.split_once('-')?;
    let start = start.parse().ok()?;
    let end = if end == "*" {
        None
    } else {
        Some(end.parse().ok()?)
    };
    Some((start, end))
}

/// Completes each of `attributes` (lower-case) that `entry` holds as a range (`member;range=…`).
pub(super) async fn complete_member_ranges(
    ldap: &mut Ldap,
    timeout: Duration,
    entry: &mut RawEntry,
    attributes: &[String],
) -> Result<(), SourceError> {
    for attribute in attributes {
        if entry.attrs.keys().any(|k| is_range_of(k, attribute)) {
            complete_ranges(ldap, timeout, entry, attribute).await?;
        }
    }
    Ok(())
}

/// Fetches the remaining values of a ranged attribute (AD answers `member;range=0-1499`): `entry`
/// holds the first range under its lowercase `attribute;range=…` key; on success it holds every
/// value under `attribute` instead. Public so that tests can drive it against a real server
/// (Samba answers unranged unless asked for a range).
pub async fn complete_ranges(
    ldap: &mut Ldap,
    timeout: Duration,
    entry: &mut RawEntry,
    attribute: &str,
) -> Result<(), SourceError> {
    let cut_short = |message: String| SourceError::RangeCutShort {
        dn: entry.dn.clone(),
        attribute: attribute.to_string(),
        message,
    };
    let mut values: Vec<Vec<u8>> = entry.attrs.remove(attribute).unwrap_or_default();
    let key = entry
        .attrs
        .keys()
        .find(|k| is_range_of(k, attribute))
        .cloned()
        .ok_or_else(|| cut_short("no range in the answer".into()))?;
    let mut range =
        parse_range(&key).ok_or_else(|| cut_short(format!("unreadable range {key}")))?;
    values.extend(entry.attrs.remove(&key).unwrap_or_default());
    while let (_, Some(end)) = range {
        let request = format!("{attribute};range={}-*", end + 1);
        let result = ldap
            .with_timeout(timeout)
            .search(
                &entry.dn,
                Scope::Base,
                "(objectClass=*)",
                vec![request.clone()],
            )
            .await
            .map_err(|e| cut_short(e.to_string()))?;
        let (entries, result) = (result.0, result.1);
        if result.rc != RC_SUCCESS {
            return Err(cut_short(format!(
                "{} {}",
                ResultCode(result.rc),
                result.text
            )));
        }
        let next = entries
            .into_iter()
            .find_map(decode_entry)
            .ok_or_else(|| cut_short("the entry disappeared during ranged retrieval".into()))?;
        let (next_key, next_values) = next
            .attrs
            .into_iter()
            .find(|(k, _)| is_range_of(k, attribute))
            .ok_or_else(|| cut_short(format!("no values returned for {request}")))?;
        let next_range = parse_range(&next_key)
            .ok_or_else(|| cut_short(format!("unreadable range {next_key}")))?;
        if next_range.0 != end + 1 {
            return Err(cut_short(format!("asked for {request}, got {next_key}")));
        }
        values.extend(next_values);
        range = next_range;
    }
    entry.attrs.insert(attribute.to_string(), values);
    Ok(())
}

/// Decodes a SearchResultEntry (`[APPLICATION 4] { objectName, attributes }`) without panicking.
pub(crate) fn decode_entry(entry: ResultEntry) -> Option<RawEntry> {
    let tag: StructureTag = entry.0;
    if tag.id != 4 {
        return None;
    }
    let (dn, attributes) = text_and_sequence(tag)?;
    let mut attrs: HashMap<String, Vec<Vec<u8>>> =
        HashMap::with_capacity_and_hasher(attributes.len(), Default::default());
    for attribute in attributes {
        let (name, values) = text_and_sequence(attribute)?;
        let name = name.to_ascii_lowercase();
        let values = values
            .into_iter()
            .filter_map(|v| match v.payload {
                PL::P(bytes) => Some(bytes),
                PL::C(_) => None,
            })
            .collect();
        attrs.insert(name, values);
    }
    Some(RawEntry { dn, attrs })
}

/// The parts of a `SEQUENCE { OCTET STRING, SEQUENCE OF … }` (an entry: its DN and attributes;
/// an attribute: its name and values); `None` for any other shape.
fn text_and_sequence(tag: StructureTag) -> Option<(String, Vec<StructureTag>)> {
    let PL::C(mut parts) = tag.payload else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let sequence = parts.pop()?;
    let text = parts.pop()?;
    let (PL::P(text), PL::C(sequence)) = (text.payload, sequence.payload) else {
        return None;
    };
    Some((String::from_utf8_lossy(&text).into_owned(), sequence))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range("member;range=0-1499"), Some((0, Some(1499))));
        assert_eq!(parse_range("member;range=1500-*"), Some((1500, None)));
        assert_eq!(parse_range("member;range=x-1"), None);
        assert!(is_range_of("member;range=0-1499", "member"));
        assert!(!is_range_of("memberof", "member"));
    }
}
