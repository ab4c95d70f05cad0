//! Sources: read the configured user and group scopes from an LDAP server or an LDIF file into a Directory.
//!
//! A read is all or nothing: any failed page, non-success result, referral we cannot follow or
//! range retrieval cut short is a [`SourceError`], never a shorter list (docs/safety.md rule 1).

pub(crate) mod filter;
pub mod incremental;
pub mod ldap;
pub(crate) mod ldif;
mod result_code;
mod tls;
mod usn;

pub use result_code::ResultCode;
pub use tls::CertificateName;

use rustc_hash::FxHashMap as HashMap;

use crate::config::{GroupsConfig, LdapConfig, UsersConfig};

/// One entry as read from LDAP or LDIF: attribute names lower-cased, values as raw bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawEntry {
    pub dn: String,
    pub attrs: HashMap<String, Vec<Vec<u8>>>,
}

#[cfg(test)]
impl RawEntry {
    /// An entry with these attributes (names lower-cased, values as UTF-8 bytes).
    pub(crate) fn for_test(dn: &str, attrs: &[(&str, &[&str])]) -> RawEntry {
        let attrs = attrs
            .iter()
            .map(|(name, values)| {
                let values = values.iter().map(|v| v.as_bytes().to_vec()).collect();
                (name.to_ascii_lowercase(), values)
            })
            .collect();
        RawEntry {
            dn: dn.into(),
            attrs,
        }
    }
}

impl RawEntry {
    pub fn values(&self, attribute: &str) -> &[Vec<u8>] {
        let found = if attribute.bytes().any(|b| b.is_ascii_uppercase()) {
            self.attrs.get(&attribute.to_ascii_lowercase())
        } else {
            self.attrs.get(attribute)
        };
        found.map(Vec::as_slice).unwrap_or(&[])
    }

    /// The immutable source id: objectGUID as a canonical GUID string, other ids as text.
    pub fn source_id(&self, attribute: &str) -> Option<String> {
        let value = self.values(attribute).first()?;
        if attribute.eq_ignore_ascii_case("objectGUID") && value.len() == 16 {
            let bytes: [u8; 16] = value.as_slice().try_into().ok()?;
            return Some(uuid::Uuid::from_bytes_le(bytes).hyphenated().to_string());
        }
        match std::str::from_utf8(value) {
            Ok(text) if !text.trim().is_empty() => Some(text.trim().to_string()),
            Ok(_) => None,
            Err(_) => Some(value.iter().map(|b| format!("{b:02x}")).collect()),
        }
    }
}

/// The attributes that hold a group's members: `member` (groupOfNames, AD `group`) and
/// `uniqueMember` (groupOfUniqueNames) hold DNs, `memberUid` (posixGroup) holds user names.
/// Every read asks for all of them: with `[groups] member_attribute` unset each group's members
/// are read from whichever it carries; with it set, the others only serve to warn about a group
/// whose members sit in another attribute.
pub const MEMBERSHIP_ATTRIBUTES: [&str; 3] = ["member", "uniqueMember", "memberUid"];

/// Whether values of the membership attribute `attribute` are user names (`memberUid`) rather
/// than DNs.
pub fn holds_user_names(attribute: &str) -> bool {
    attribute.eq_ignore_ascii_case("memberUid")
}

/// The group attributes that may hold members: [`MEMBERSHIP_ATTRIBUTES`] and the configured one.
pub(crate) fn member_attributes(groups: &GroupsConfig) -> Vec<String> {
    let mut attributes: Vec<String> = MEMBERSHIP_ATTRIBUTES.map(String::from).to_vec();
    if let Some(configured) = &groups.member_attribute
        && !attributes
            .iter()
            .any(|a| a.eq_ignore_ascii_case(configured))
    {
        attributes.push(configured.clone());
    }
    attributes
}

/// Where a read delivers its entries: users first, then groups (the directory builder).
pub trait EntrySink {
    fn add_user(&mut self, entry: &RawEntry) -> Result<(), SourceError>;
    fn add_group(&mut self, entry: &RawEntry) -> Result<(), SourceError>;
    /// [`add_user`](Self::add_user) for an entry the reader no longer needs: a sink that keeps
    /// entries (the snapshot recorder) takes it instead of copying it.
    fn take_user(&mut self, entry: RawEntry) -> Result<(), SourceError> {
        self.add_user(&entry)
    }
    /// [`add_group`](Self::add_group) for an entry the reader no longer needs.
    fn take_group(&mut self, entry: RawEntry) -> Result<(), SourceError> {
        self.add_group(&entry)
    }
}

/// Why the directory could not be read completely. Every variant fails the run for every sink.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "cannot connect to LDAP server {url}: {message}. Check [ldap] url, the network and TLS settings"
    )]
    Connect { url: String, message: String },
    #[error("cannot load the CA file {path}: {message}. Check [ldap] ca_file")]
    CaFile { path: String, message: String },
    #[error("the LDAP server {url} presented a TLS certificate {}", problem.explain(host))]
    CertificateName {
        url: String,
        host: String,
        problem: CertificateName,
    },
    #[error("LDAP bind as {dn} failed: {code}{}. {}", said(text), code.hint())]
    Bind {
        dn: String,
        code: ResultCode,
        text: String,
    },
    #[error(
        "LDAP search of {base} with filter {filter} failed: {message}. The read is incomplete; nothing was written"
    )]
    Search {
        base: String,
        filter: String,
        message: String,
    },
    #[error(
        "LDAP search of {base} with filter {filter} failed: {code}{}. {} The read is incomplete; nothing was written", said(text), code.hint()
    )]
    SearchResult {
        base: String,
        filter: String,
        code: ResultCode,
        text: String,
    },
    #[error(
        "LDAP search of {base} returned a referral to {referrals}, which ldapsync does not follow; point [{section}] base_dn at the server that holds the entries"
    )]
    Referral {
        base: String,
        section: &'static str,
        referrals: String,
    },
    #[error(
        "ranged retrieval of \"{attribute}\" on {dn} was cut short ({message}); the member list would be incomplete"
    )]
    RangeCutShort {
        dn: String,
        attribute: String,
        message: String,
    },
    #[error("LDIF source {path}:{line}: {message}")]
    Ldif {
        path: String,
        line: usize,
        message: String,
    },
    #[error(
        "entry {dn} has no \"{attribute}\" (the configured id attribute); refusing to continue because an entry without its immutable id cannot be tracked. Check [{section}] id_attribute"
    )]
    MissingId {
        dn: String,
        attribute: String,
        section: &'static str,
    },
    #[error("the LDAP bind password could not be resolved: {0}")]
    Secret(#[from] crate::secret::SecretError),
}

/// The server's diagnostic message, if it sent one, as `: message`.
fn said(text: &str) -> String {
    match text.trim() {
        "" => String::new(),
        text => format!(": {text}"),
    }
}

/// Counts of what a read returned, for metrics, warnings and the scope-emptied check.
#[derive(Debug, Clone, Default)]
pub struct ReadStats {
    pub users: u64,
    pub groups: u64,
    /// Per search base: the continuation references (searchResRef) skipped, and where they
    /// pointed. Entries behind them are not read.
    pub continuation_references: Vec<SkippedReferences>,
}

/// The continuation references one search skipped.
#[derive(Debug, Clone)]
pub struct SkippedReferences {
    pub base: String,
    pub urls: Vec<String>,
}

/// Reads the configured user and group scopes from `[ldap]` (a server or an LDIF file) into `sink`.
pub async fn read(
    ldap: &LdapConfig,
    users: &UsersConfig,
    groups: &GroupsConfig,
    sink: &mut impl EntrySink,
) -> Result<ReadStats, SourceError> {
    match &ldap.ldif_file {
        Some(path) => ldif::read(path, users, groups, sink),
        None => self::ldap::read(ldap, users, groups, sink).await,
    }
}
