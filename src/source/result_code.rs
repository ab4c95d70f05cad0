//! LDAP result codes (RFC 4511 §4.1.9) by name, with what an operator can do about each.

use std::fmt;

/// An LDAP result code. Callers decide on [`ResultCode::code`]; the name and the hint are for
/// people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultCode(pub u32);

impl ResultCode {
    pub const SIZE_LIMIT_EXCEEDED: ResultCode = ResultCode(4);
    pub const INVALID_CREDENTIALS: ResultCode = ResultCode(49);

    pub fn code(self) -> u32 {
        self.0
    }

    /// The RFC 4511 name, e.g. `sizeLimitExceeded`.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "success",
            1 => "operationsError",
            2 => "protocolError",
            3 => "timeLimitExceeded",
            4 => "sizeLimitExceeded",
            7 => "authMethodNotSupported",
            8 => "strongerAuthRequired",
            10 => "referral",
            11 => "adminLimitExceeded",
            12 => "unavailableCriticalExtension",
            13 => "confidentialityRequired",
            16 => "noSuchAttribute",
            17 => "undefinedAttributeType",
            18 => "inappropriateMatching",
            21 => "invalidAttributeSyntax",
            32 => "noSuchObject",
            34 => "invalidDNSyntax",
            48 => "inappropriateAuthentication",
            49 => "invalidCredentials",
            50 => "insufficientAccessRights",
            51 => "busy",
            52 => "unavailable",
            53 => "unwillingToPerform",
            54 => "loopDetect",
            80 => "other",
            _ => "unknown result code",
        }
    }

    /// What to do about it, as one sentence (empty when there is nothing specific to say).
    pub fn hint(self) -> &'static str {
        match self.0 {
            3 => {
                "The server's time limit cut the search short: raise the time limit for the bind DN on the server, or narrow [groups]/[users] base_dn and filter."
            }
            4 => {
                "The server's size limit is smaller than a page: lower [ldap] page_size below it, or raise the size limit for the bind DN on the server."
            }
            11 => {
                "An administrative limit was hit: lower [ldap] page_size (AD caps pages at MaxPageSize, 1000 by default), or raise the limit on the server."
            }
            12 => {
                "The server refused a control ldapsync needs (paged results, RFC 2696): enable it for the bind DN."
            }
            8 | 13 => "The server wants an encrypted connection: use ldaps:// or starttls = true.",
            32 => "Check [groups] and [users] base_dn: the entry does not exist on this server.",
            34 => "Check the DNs in [ldap], [groups] and [users]: one is not a valid DN.",
            48 | 49 => "Check [ldap] bind_dn and the bind password.",
            50 => "Grant the bind DN read access to the configured scopes and attributes.",
            51 | 52 => "The server is busy or unavailable: try again later.",
            53 => "The server refused the operation; its log says why.",
            _ => "",
        }
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (result code {})", self.name(), self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_codes_are_named_with_a_hint() {
        let size = ResultCode::SIZE_LIMIT_EXCEEDED;
        assert_eq!(size.to_string(), "sizeLimitExceeded (result code 4)");
        assert!(size.hint().contains("page_size"));
        assert_eq!(
            ResultCode::INVALID_CREDENTIALS.to_string(),
            "invalidCredentials (result code 49)"
        );
        assert!(ResultCode(49).hint().contains("bind_dn"));
        assert_eq!(ResultCode(4242).name(), "unknown result code");
        assert_eq!(ResultCode(4242).hint(), "");
    }
}
