//! ldapsync: reconcile LDAP groups and their members into SCIM, PingOne, Posit Connect and ForgeRock.
