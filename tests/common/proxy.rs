//! The fault-injecting proxy of `tests/emulators/fault_proxy.py` ([`FaultProxy`]), put in front
//! of a server (scim2-server or an emulator) to make it fail in chosen ways.

use serde_json::{Value, json};

use super::emulators::Emulator;

/// `fault_proxy.py` forwarding to a target; rules are set per test ([`FaultProxy::rules`]).
/// Dropping it stops the process.
pub struct FaultProxy {
    emu: Emulator,
    target: String,
}

impl FaultProxy {
    /// A proxy forwarding every request to `target` (`http://127.0.0.1:PORT[/prefix]`): paths
    /// are forwarded as they are, so [`FaultProxy::url`] keeps the prefix.
    pub fn start(target: &str) -> FaultProxy {
        let origin: String = target.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
        FaultProxy {
            emu: Emulator::start("fault_proxy", &["--target", &origin]),
            target: target.trim_end_matches('/').to_string(),
        }
    }

    /// The proxy's URL for what `target` was: the same path prefix, the proxy's host and port.
    pub fn url(&self) -> String {
        let prefix = self
            .target
            .splitn(4, '/')
            .nth(3)
            .map(|p| format!("/{p}"))
            .unwrap_or_default();
        format!("{}{prefix}", self.emu.base_url())
    }

    /// Replaces the rules (see the module doc of `fault_proxy.py`), e.g.
    /// `json!([{"method":"POST","path":"/Groups$","action":"status","status":500,"times":1}])`.
    pub fn rules(&self, rules: Value) {
        let r = self
            .emu
            .request("POST", "/__proxy/rules", &[], Some(&rules));
        assert_eq!(r.status, 200, "set proxy rules: {}", r.body);
    }

    /// No rules: every request is forwarded as is.
    pub fn clear(&self) {
        self.rules(json!([]));
    }

    /// Every proxied request, oldest first (`method`, `path`, `query`, `forwarded`, `status`…).
    pub fn log(&self) -> Vec<Value> {
        let r = self.emu.request("GET", "/__proxy/log", &[], None);
        assert_eq!(r.status, 200, "proxy log: {}", r.body);
        r.json().as_array().cloned().unwrap_or_default()
    }

    /// The logged requests with this method whose path matches `path_suffix` at its end.
    pub fn requests(&self, method: &str, path_suffix: &str) -> Vec<Value> {
        self.log()
            .into_iter()
            .filter(|r| {
                r["method"] == method
                    && r["path"].as_str().is_some_and(|p| p.ends_with(path_suffix))
            })
            .collect()
    }

    pub fn stderr_tail(&self, lines: usize) -> String {
        self.emu.stderr_tail(lines)
    }
}
