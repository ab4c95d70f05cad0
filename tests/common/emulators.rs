//! The Python target emulators of `tests/emulators/` ([`Emulator`]), the venv's Python that runs
//! them, and the [`EmulatorWorld`] of the emulator-driven sink tests.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use super::http::{HttpResponse, http_request};
use super::process::{
    START_TIMEOUT, file_tail, repo_root, stop_child, temp_dir, venv_program, wait_for_exit,
    write_file,
};
use super::run::{assert_code, ldap_config_toml, permissive_safety_toml, sync};
use super::slapd::Slapd;

/// `$LDAPSYNC_PYTHON`, else `$REPO/.venv/bin/python`.
pub fn venv_python() -> PathBuf {
    venv_program("LDAPSYNC_PYTHON", "python")
}

/// One of the target emulators in `tests/emulators/<script>.py`, run as
/// `python <script>.py --port 0 ARGS…`; it prints `LISTENING http://127.0.0.1:PORT` on stdout
/// when ready. Its admin API is under `/__admin`. Dropping it stops the process.
pub struct Emulator {
    child: Option<Child>,
    base_url: String,
    name: String,
    dir: TempDir,
}

impl Emulator {
    /// Starts `tests/emulators/<script>.py` (`script` with or without `.py`).
    pub fn start(script: &str, args: &[&str]) -> Emulator {
        let name = script.trim_end_matches(".py");
        let path = repo_root()
            .join("tests/emulators")
            .join(format!("{name}.py"));
        Self::start_script(&path, args)
    }

    /// Starts the emulator script at `path` (same contract as [`Emulator::start`]).
    pub fn start_script(path: &Path, args: &[&str]) -> Emulator {
        let python = venv_python();
        assert!(path.exists(), "emulator {} not found", path.display());
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = temp_dir(&format!("ldapsync-emu-{name}-"));
        let stderr_path = dir.path().join("stderr.log");
        let stdout_path = dir.path().join("stdout.log");
        let stderr = File::create(&stderr_path).expect("create emulator stderr log");
        let mut child = Command::new(&python)
            .arg(path)
            .args(["--port", "0"])
            .args(args)
            .current_dir(repo_root())
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {} {}: {e}", python.display(), path.display())
            });

        // Read the first stdout line in a thread (with a timeout here), then keep draining
        // stdout into a file so that the emulator never blocks on a full pipe.
        let stdout = child.stdout.take().expect("stdout pipe");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let _ = tx.send(first);
            if let Ok(mut f) = File::create(stdout_path) {
                let _ = std::io::copy(&mut reader, &mut f);
            }
        });
        let mut emu = Emulator {
            child: Some(child),
            base_url: String::new(),
            name,
            dir,
        };
        let first = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => panic!(
                "emulator {} printed no LISTENING line within {START_TIMEOUT:?}; stderr:\n{}",
                emu.name,
                emu.stderr_tail(40)
            ),
        };
        let Some(url) = first.trim().strip_prefix("LISTENING ") else {
            // Give a crashing emulator a moment to finish writing its traceback.
            if let Some(c) = emu.child.as_mut() {
                wait_for_exit(c, Duration::from_secs(5));
            }
            panic!(
                "emulator {}: expected `LISTENING http://127.0.0.1:PORT` on stdout, got {first:?}; stderr:\n{}",
                emu.name,
                emu.stderr_tail(40)
            );
        };
        emu.base_url = url.trim_end_matches('/').to_owned();
        emu
    }

    /// `http://127.0.0.1:PORT` as the emulator announced it.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn stderr_tail(&self, lines: usize) -> String {
        file_tail(&self.dir().join("stderr.log"), lines)
    }

    /// Any request to `base_url() + path`.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> HttpResponse {
        http_request(method, &format!("{}{path}", self.base_url), headers, body)
    }

    /// GET /__admin/state (expects 200).
    pub fn state(&self) -> Value {
        let r = self.request("GET", "/__admin/state", &[], None);
        assert_eq!(
            r.status,
            200,
            "emulator {} GET /__admin/state: {}\nstderr:\n{}",
            self.name,
            r.body,
            self.stderr_tail(20)
        );
        r.json()
    }

    /// The `key` list of `/__admin/state` (empty when absent).
    pub fn state_list(&self, key: &str) -> Vec<Value> {
        self.state()[key].as_array().cloned().unwrap_or_default()
    }

    /// The emulator's request log (`requests` of `/__admin/state`), oldest first.
    pub fn requests(&self) -> Vec<Value> {
        self.state_list("requests")
    }

    /// POST `body` to the admin API: `path` is taken as is when it starts with `/__admin`,
    /// else it is appended to `/__admin` (so `"/reset"` and `"/__admin/reset"` are the same).
    /// Expects a 2xx status; returns the JSON body (Null if empty).
    pub fn admin_post(&self, path: &str, body: &Value) -> Value {
        let full = if path.starts_with("/__admin") {
            path.to_owned()
        } else {
            format!("/__admin/{}", path.trim_start_matches('/'))
        };
        let r = self.request("POST", &full, &[], Some(body));
        assert!(
            (200..300).contains(&r.status),
            "emulator {} POST {full}: {} {}\nstderr:\n{}",
            self.name,
            r.status,
            r.body,
            self.stderr_tail(20)
        );
        r.json_or_null()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(5));
        }
    }
}

/// The world of the emulator-driven sink tests: a real slapd, one emulator of
/// `tests/emulators/`, and a temporary directory for the config, secret and state files.
pub struct EmulatorWorld {
    pub slapd: Slapd,
    pub emu: Emulator,
    pub dir: TempDir,
}

impl EmulatorWorld {
    /// slapd (base tree only) and `tests/emulators/<script>.py EMULATOR_ARGS…`.
    pub fn start(script: &str, emulator_args: &[&str]) -> EmulatorWorld {
        EmulatorWorld {
            slapd: Slapd::start(),
            emu: Emulator::start(script, emulator_args),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The state file of the configs written by [`EmulatorWorld::write_config`].
    pub fn state_path(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }

    /// Writes `config.toml`: [`ldap_config_toml`] for the world's slapd and state file,
    /// [`permissive_safety_toml`]`(max_member_removes)`, and one `[[sinks]]` table with the
    /// lines `sink`. Returns its path.
    pub fn write_config(&self, max_member_removes: u32, sink: &str) -> PathBuf {
        let text = format!(
            "{ldap}\n{safety}\n[[sinks]]\n{sink}\n",
            ldap = ldap_config_toml(&self.slapd, &self.state_path()),
            safety = permissive_safety_toml(max_member_removes),
        );
        write_file(self.dir.path(), "config.toml", text)
    }

    /// The emulator's groups (`groups` of its state).
    pub fn groups(&self) -> Vec<Value> {
        self.emu.state_list("groups")
    }

    /// The emulator's groups whose `name` is `name`.
    pub fn groups_named(&self, name: &str) -> Vec<Value> {
        self.groups()
            .into_iter()
            .filter(|g| g["name"] == name)
            .collect()
    }

    /// The first emulator group named `name`.
    pub fn group(&self, name: &str) -> Option<Value> {
        self.groups_named(name).into_iter().next()
    }

    /// The sorted names of group `name`'s members: `pick` takes the name from each value of
    /// the group's `list` field. Panics (listing every group) when there is no such group.
    pub fn member_names_in(
        &self,
        name: &str,
        list: &str,
        pick: impl Fn(&Value) -> Option<&str>,
    ) -> Vec<String> {
        let group = self
            .group(name)
            .unwrap_or_else(|| panic!("no group {name:?}: {:#?}", self.groups()));
        let empty = Vec::new();
        let values = group[list].as_array().unwrap_or(&empty);
        let mut names: Vec<String> = values
            .iter()
            .filter_map(|v| pick(v).map(str::to_string))
            .collect();
        names.sort();
        names
    }

    /// Runs `sync` with `config` and asserts that it exits 0 and sends no write that `keep`
    /// keeps (a converged target).
    #[track_caller]
    pub fn assert_sync_writes_nothing(&self, config: &Path, keep: impl Fn(&Value) -> bool) {
        let before = self.emu.requests().len();
        assert_code(&sync(config, &[]), 0);
        assert_eq!(self.writes_since(before, keep), Vec::<String>::new());
    }

    /// The emulator's requests from index `from` of its log that change something (not GET)
    /// and that `keep` keeps, as `"METHOD" "path" -> status`.
    pub fn writes_since(&self, from: usize, keep: impl Fn(&Value) -> bool) -> Vec<String> {
        self.emu
            .requests()
            .iter()
            .skip(from)
            .filter(|r| r["method"] != "GET" && keep(r))
            .map(|r| format!("{} {} -> {}", r["method"], r["path"], r["status"]))
            .collect()
    }
}

/// `struct $env(EmulatorWorld)` for the emulator script `$script`: it derefs to the
/// [`EmulatorWorld`] and starts with `$env::start(emulator_args)`; the test file adds its own
/// methods in an `impl $env` block.
#[macro_export]
macro_rules! emulator_env {
    ($env:ident, $script:literal) => {
        /// slapd + the emulator; derefs to the [`EmulatorWorld`].
        struct $env(EmulatorWorld);

        impl std::ops::Deref for $env {
            type Target = EmulatorWorld;
            fn deref(&self) -> &EmulatorWorld {
                &self.0
            }
        }

        impl $env {
            fn start(emulator_args: &[&str]) -> $env {
                $env(EmulatorWorld::start($script, emulator_args))
            }
        }
    };
}
