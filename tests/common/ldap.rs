//! The [`LdapServer`] trait: a directory administered with the ldap-utils commands, as
//! [`Slapd`](super::Slapd) and [`SambaDc`](super::SambaDc) are; and reading the LDIF they print.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::process::{OutputExt, file_tail, run_with_timeout};

/// A directory server administered with the ldap-utils commands (`ldapadd`, `ldapmodify`,
/// `ldapdelete`, `ldapmodrdn`, `ldapsearch`): the plumbing [`Slapd`] and [`SambaDc`] share.
pub trait LdapServer {
    /// The server's name in failure messages.
    const NAME: &'static str;
    /// The naming context, probed with a base search to tell that the server is ready.
    const BASE_DN: &'static str;
    /// How long one ldap-utils command may take before it is killed.
    const TOOL_TIMEOUT: Duration;

    /// An ldap-utils command bound as the administrator (`-x -H URL -D DN -w PASSWORD`).
    fn ldap_tool(&self, name: &str) -> Command;

    /// The server's own log (stdout and stderr).
    fn log_path(&self) -> PathBuf;

    fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log_path(), lines)
    }

    /// Runs `name` with `args`, feeding it `input`; panics with its stderr, the start of the
    /// input and the server's log tail on failure.
    fn run_tool(&self, name: &str, args: &[&str], input: &str) {
        let out = run_with_timeout(
            self.ldap_tool(name).args(args),
            Some(input.as_bytes()),
            Self::TOOL_TIMEOUT,
        );
        if !out.status.success() {
            let command = [&[name], args].concat().join(" ");
            let shown: String = input.chars().take(4000).collect();
            panic!(
                "{command} failed (exit {}):\n{}\n--- input (start) ---\n{shown}\n--- {} log tail ---\n{}",
                out.code(),
                out.stderr_str(),
                Self::NAME,
                self.log_tail(20)
            );
        }
    }

    /// Adds entries (LDIF without changetype) with `ldapadd`; panics with stderr on failure.
    fn add(&self, ldif: &str) {
        self.run_tool("ldapadd", &[], ldif)
    }

    /// Applies LDIF change records with `ldapmodify` (default changetype: modify; records may
    /// carry `changetype: add|delete|modrdn`); panics with stderr on failure.
    fn modify(&self, ldif: &str) {
        self.run_tool("ldapmodify", &[], ldif)
    }

    /// Deletes entries (by DN) with `ldapdelete`; panics on failure.
    fn delete(&self, dns: &[&str]) {
        self.run_tool("ldapdelete", &[], &format!("{}\n", dns.join("\n")))
    }

    /// Renames `dn` to `new_rdn` (same parent, old RDN value removed) with `ldapmodrdn -r`.
    fn rename(&self, dn: &str, new_rdn: &str) {
        self.run_tool("ldapmodrdn", &["-r", dn, new_rdn], "")
    }

    /// Adds `member` to the `member` attribute of `group`.
    fn add_member(&self, group: &str, member: &str) {
        self.modify(&format!(
            "dn: {group}\nchangetype: modify\nadd: member\nmember: {member}\n"
        ))
    }

    /// Removes `member` from the `member` attribute of `group`.
    fn remove_member(&self, group: &str, member: &str) {
        self.modify(&format!(
            "dn: {group}\nchangetype: modify\ndelete: member\nmember: {member}\n"
        ))
    }

    /// `ldapsearch -LLL` as the administrator with `scope` (base, one, sub), returning the LDIF
    /// text (unwrapped lines). An absent base (noSuchObject, 32) gives an empty string; other
    /// failures panic.
    fn search_scoped(&self, base: &str, scope: &str, filter: &str, attrs: &[&str]) -> String {
        let out = run_with_timeout(
            self.ldap_tool("ldapsearch")
                .args([
                    "-LLL",
                    "-o",
                    "ldif-wrap=no",
                    "-b",
                    base,
                    "-s",
                    scope,
                    filter,
                ])
                .args(attrs),
            None,
            Self::TOOL_TIMEOUT,
        );
        match out.code() {
            0 => out.stdout_str(),
            32 => String::new(),
            _ => panic!(
                "ldapsearch -b {base:?} {filter:?} failed:\n{}",
                out.describe()
            ),
        }
    }

    /// The values of `attr` on the entry `dn` (empty if the entry or attribute is absent).
    fn attr_values(&self, dn: &str, attr: &str) -> Vec<String> {
        let ldif = self.search_scoped(dn, "base", "(objectClass=*)", &[attr]);
        let mut values = Vec::new();
        for line in ldif.lines() {
            if let Some((name, rest)) = line.split_once(':') {
                if !name.eq_ignore_ascii_case(attr) {
                    continue;
                }
                values.push(decode_ldif_value(rest));
            }
        }
        values
    }

    /// A bound base search of the naming context: Ok once the server answers it.
    fn probe(&self) -> Result<(), String> {
        let out = run_with_timeout(
            self.ldap_tool("ldapsearch").args([
                "-b",
                Self::BASE_DN,
                "-s",
                "base",
                "(objectClass=*)",
                "1.1",
            ]),
            None,
            Duration::from_secs(30),
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("ldapsearch: {}", out.describe()))
        }
    }
}

/// `name -x -H url -D bind_dn -w password -o nettimeout=10`.
/// An ldap-utils command bound with a simple bind, ignoring ldap.conf/.ldaprc (`LDAPNOINIT`).
pub(super) fn ldap_command(name: &str, url: &str, bind_dn: &str, password: &str) -> Command {
    let mut cmd = Command::new(name);
    cmd.args(["-x", "-H", url, "-D", bind_dn, "-w", password])
        .args(["-o", "nettimeout=10"])
        .env("LDAPNOINIT", "1");
    cmd
}

/// The DNs of an (unwrapped) LDIF text, decoding base64 (`dn::`) ones.
pub fn parse_ldif_dns(ldif: &str) -> Vec<String> {
    ldif.lines()
        .filter_map(|l| l.strip_prefix("dn:"))
        .map(decode_ldif_value)
        .collect()
}

/// The value part of an LDIF `attr:` line after the first colon: `: text` or `:: base64`.
pub(super) fn decode_ldif_value(rest: &str) -> String {
    use base64::Engine as _;
    if let Some(b64) = rest.strip_prefix(':') {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .unwrap_or_else(|e| panic!("bad base64 in LDIF value {b64:?}: {e}"));
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        rest.trim_start().to_owned()
    }
}
