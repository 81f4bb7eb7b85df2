//! Runs the real package managers (npm, pnpm, yarn 1, yarn 4) against a registry URL, each in a
//! fresh project with its own HOME and caches, offline apart from that registry.
//!
//! npm comes from PATH; pnpm, yarn 1 and yarn 4 from `target/test-tools/` (or `$NPG_TEST_TOOLS`),
//! where `scripts/install-test-deps` puts them. A missing tool fails the test, naming the script.
//!
//! ```ignore
//! let project = Project::fixture(Client::Pnpm, &npg.proxy_url);
//! project.install().assert_success();
//! assert_eq!(project.installed_version("npg-fixture-a").as_deref(), Some("2.0.0"));
//! for pkg in project.locked_packages() { /* name, version, resolved, integrity */ }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What the fixture project depends on.
pub const FIXTURE_DEPENDENCIES: &[(&str, &str)] = &[
    ("npg-fixture-a", "^2.0.0"),
    ("@npg-test/scoped", "^1.0.0"),
    ("npg-legacy", "1.0.0"),
];

/// What installing the fixture project must give: (name, version), direct and transitive.
pub const FIXTURE_RESOLUTION: &[(&str, &str)] = &[
    ("npg-fixture-a", "2.0.0"),
    ("npg-fixture-b", "1.0.1"),
    ("@npg-test/scoped", "1.2.0"),
    ("npg-legacy", "1.0.0"),
];

/// How long one client command may take before it is killed and the test fails.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    Npm,
    Pnpm,
    Yarn1,
    Yarn4,
}

impl Client {
    pub fn name(self) -> &'static str {
        match self {
            Client::Npm => "npm",
            Client::Pnpm => "pnpm",
            Client::Yarn1 => "yarn1",
            Client::Yarn4 => "yarn4",
        }
    }

    /// The lockfile the client writes in the project directory.
    pub fn lockfile(self) -> &'static str {
        match self {
            Client::Npm => "package-lock.json",
            Client::Pnpm => "pnpm-lock.yaml",
            Client::Yarn1 | Client::Yarn4 => "yarn.lock",
        }
    }

    /// The client's executable; panics (naming scripts/install-test-deps) when it is missing.
    pub fn program(self) -> PathBuf {
        let path = match self {
            Client::Npm => return super::require_binary("npm"),
            Client::Pnpm => tools_dir().join("bin/pnpm"),
            Client::Yarn1 => tools_dir().join("bin/yarn"),
            Client::Yarn4 => tools_dir().join("yarn4/bin/yarn"),
        };
        if !path.exists() {
            panic!(
                "{} is not installed at {}: run scripts/install-test-deps (it installs every tool \
                 the tests need)",
                self.name(),
                path.display()
            );
        }
        path
    }

    /// The command installing from the manifest, writing the lockfile.
    pub fn install_args(self) -> &'static [&'static str] {
        match self {
            Client::Npm => &["install"],
            Client::Pnpm => &["install"],
            Client::Yarn1 => &["install", "--non-interactive", "--no-progress"],
            Client::Yarn4 => &["install"],
        }
    }

    /// The command installing exactly the lockfile, failing if it would change it.
    pub fn frozen_install_args(self) -> &'static [&'static str] {
        match self {
            Client::Npm => &["ci"],
            Client::Pnpm => &["install", "--frozen-lockfile"],
            Client::Yarn1 => &["install", "--frozen-lockfile", "--non-interactive", "--no-progress"],
            Client::Yarn4 => &["install", "--immutable"],
        }
    }

    /// The command adding one dependency (`name` or `name@range`) to the project.
    pub fn add_args(self, spec: &str) -> Vec<String> {
        let mut args: Vec<String> = match self {
            Client::Npm => vec!["install".into()],
            Client::Pnpm | Client::Yarn4 => vec!["add".into()],
            Client::Yarn1 => vec!["add".into(), "--non-interactive".into(), "--no-progress".into()],
        };
        args.push(spec.into());
        args
    }
}

/// `target/test-tools` of this checkout, or `$NPG_TEST_TOOLS`.
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("NPG_TEST_TOOLS") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-tools"),
    }
}

/// The result of one client command.
#[derive(Debug)]
pub struct ClientOutput {
    pub command: String,
    /// None when the command was killed after its timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl ClientOutput {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    /// Panics with the whole output unless the command succeeded.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "`{}` failed\n{self}", self.command);
        self
    }

    /// Panics with the whole output unless the command failed (and did not time out).
    #[track_caller]
    pub fn assert_failure(&self) -> &Self {
        assert!(
            !self.success() && !self.timed_out(),
            "`{}` should have failed\n{self}",
            self.command
        );
        self
    }
}

impl std::fmt::Display for ClientOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = match self.status {
            Some(s) => format!("{s}"),
            None => "killed after timeout".into(),
        };
        write!(
            f,
            "--- {} ({status}, {:.1?})\n--- stdout:\n{}\n--- stderr:\n{}\n---",
            self.command, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// One package as a lockfile records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    /// npm `resolved`, yarn 1 `resolved` (with its `#sha1`), pnpm `resolution.tarball` (only
    /// written for non-standard URLs), yarn 4 `resolution` (`name@npm:1.0.0`, with
    /// `::__archiveUrl=` for non-standard URLs).
    pub resolved: Option<String>,
    /// The npm integrity string (npm, pnpm, yarn 1); None for yarn 4.
    pub integrity: Option<String>,
    /// yarn 4's own checksum (of its zip archive, not of the tarball).
    pub checksum: Option<String>,
}

/// A project directory for one client, with a private HOME holding every cache and config.
pub struct Project {
    pub client: Client,
    /// The registry URL the client uses, with a trailing slash.
    pub registry: String,
    root: tempfile::TempDir,
    dependencies: Vec<(String, String)>,
    /// Extra environment for every client command (set last: overrides the defaults).
    env: Vec<(String, String)>,
}

impl Project {
    /// The fixture project (`FIXTURE_DEPENDENCIES`) for `client`, using `registry`.
    pub fn fixture(client: Client, registry: &str) -> Project {
        Project::new(client, registry, FIXTURE_DEPENDENCIES)
    }

    /// A project with these dependencies, configured for `registry` (trailing slash optional).
    pub fn new(client: Client, registry: &str, dependencies: &[(&str, &str)]) -> Project {
        client.program(); // fail early and clearly when the tool is missing
        let registry = format!("{}/", registry.trim_end_matches('/'));
        let root = tempfile::Builder::new()
            .prefix(&format!("npg-{}-", client.name()))
            .tempdir()
            .expect("temp project dir");
        let project = Project {
            client,
            registry,
            root,
            dependencies: dependencies
                .iter()
                .map(|(n, r)| (n.to_string(), r.to_string()))
                .collect(),
            env: Vec::new(),
        };
        std::fs::create_dir_all(project.dir()).unwrap();
        std::fs::create_dir_all(project.home()).unwrap();
        project.write_files();
        project
    }

    /// Adds an environment variable to every client command (e.g. `NODE_EXTRA_CA_CERTS`,
    /// `NODE_OPTIONS`), overriding the defaults.
    pub fn with_env(mut self, key: &str, value: impl Into<String>) -> Project {
        self.env.push((key.to_string(), value.into()));
        self
    }

    /// Configures `token` for the registry the way users do: `//host/path/:_authToken=` in
    /// `.npmrc`, `npmAuthToken` in yarn 4's `.yarnrc.yml`. Both yarns send it for unscoped
    /// packages only when told to always authenticate.
    pub fn set_token(&self, token: &str) {
        use std::io::Write;
        let (file, line) = match self.client {
            Client::Yarn4 => (".yarnrc.yml", format!("npmAlwaysAuth: true\nnpmAuthToken: \"{token}\"")),
            _ => {
                let nerf_dart = self.registry.split_once(':').map_or("", |(_, rest)| rest);
                let always = if self.client == Client::Yarn1 {
                    "always-auth=true\n"
                } else {
                    ""
                };
                (".npmrc", format!("{always}{nerf_dart}:_authToken={token}"))
            }
        };
        let path = self.dir().join(file);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .unwrap();
        writeln!(file, "{line}").unwrap();
    }

    /// The project directory (package.json, lockfile, node_modules).
    pub fn dir(&self) -> PathBuf {
        self.root.path().join("project")
    }

    /// The private HOME: every client cache and store lives under it.
    pub fn home(&self) -> PathBuf {
        self.root.path().join("home")
    }

    fn write_files(&self) {
        let deps: serde_json::Map<String, serde_json::Value> = self
            .dependencies
            .iter()
            .map(|(n, r)| (n.clone(), r.clone().into()))
            .collect();
        let manifest = serde_json::json!({
            "name": "npg-client-fixture",
            "version": "1.0.0",
            "private": true,
            "description": "Installed by npg's client tests",
            "license": "MIT",
            "dependencies": deps,
        });
        let dir = self.dir();
        let home = self.home();
        std::fs::write(dir.join("package.json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
        let registry = &self.registry;
        let h = home.display();
        match self.client {
            Client::Npm => {
                let npmrc = format!(
                    "registry={registry}\naudit=false\nfund=false\nupdate-notifier=false\n\
                     cache={h}/npm-cache\nprogress=false\n"
                );
                std::fs::write(dir.join(".npmrc"), npmrc).unwrap();
            }
            Client::Pnpm => {
                let npmrc = format!(
                    "registry={registry}\nupdate-notifier=false\nstore-dir={h}/pnpm-store\n\
                     cache-dir={h}/pnpm-cache\nstate-dir={h}/pnpm-state\n"
                );
                std::fs::write(dir.join(".npmrc"), npmrc).unwrap();
            }
            Client::Yarn1 => {
                std::fs::write(dir.join(".npmrc"), format!("registry={registry}\n")).unwrap();
                let yarnrc = format!(
                    "registry \"{registry}\"\ndisable-self-update-check true\n\
                     cache-folder \"{h}/yarn-cache\"\nyarn-offline-mirror false\n"
                );
                std::fs::write(dir.join(".yarnrc"), yarnrc).unwrap();
            }
            Client::Yarn4 => {
                // npmMinimalAgeGate keeps its default (1 day): the fixtures are from 2024, so it
                // passes only when the registry serves `time` (yarn 4 fails closed without it).
                let yarnrc = format!(
                    "npmRegistryServer: \"{}\"\nunsafeHttpWhitelist:\n  - \"127.0.0.1\"\n\
                     enableGlobalCache: false\ncacheFolder: \"{h}/yarn4-cache\"\n\
                     nodeLinker: node-modules\nenableTelemetry: false\n\
                     enableImmutableInstalls: false\nenableProgressBars: false\n\
                     enableScripts: true\n",
                    registry.trim_end_matches('/')
                );
                std::fs::write(dir.join(".yarnrc.yml"), yarnrc).unwrap();
            }
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let program = self.client.program();
        let home = self.home();
        let node = super::require_binary("node");
        let mut path = vec![program.parent().unwrap().to_path_buf()];
        path.push(node.parent().unwrap().to_path_buf());
        path.extend(["/usr/local/bin", "/usr/bin", "/bin"].map(PathBuf::from));
        let mut cmd = Command::new(&program);
        cmd.args(args)
            .current_dir(self.dir())
            .env_clear()
            .env("PATH", std::env::join_paths(path).unwrap())
            .env("HOME", &home)
            .env("USERPROFILE", &home)
            .env("TMPDIR", self.root.path())
            .env("LANG", "C.UTF-8")
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_STATE_HOME", home.join(".local/state"))
            .env("NO_COLOR", "1")
            .env("FORCE_COLOR", "0")
            // No network beyond the registry: no audit, fund, update checks or telemetry.
            .env("npm_config_registry", &self.registry)
            .env("npm_config_audit", "false")
            .env("npm_config_fund", "false")
            .env("npm_config_update_notifier", "false")
            .env("npm_config_progress", "false")
            .env("npm_config_userconfig", home.join(".npmrc"))
            .env("npm_config_globalconfig", home.join("global-npmrc"))
            .stdin(Stdio::null());
        match self.client {
            Client::Npm => {
                cmd.env("npm_config_cache", home.join("npm-cache"));
            }
            Client::Pnpm => {
                cmd.env("npm_config_store_dir", home.join("pnpm-store"));
            }
            Client::Yarn1 => {
                cmd.env("YARN_CACHE_FOLDER", home.join("yarn-cache"))
                    .env("YARN_DISABLE_SELF_UPDATE_CHECK", "true")
                    .env("YARN_IGNORE_PATH", "1");
            }
            Client::Yarn4 => {
                cmd.env("YARN_ENABLE_TELEMETRY", "0")
                    .env("YARN_ENABLE_GLOBAL_CACHE", "0")
                    .env("YARN_IGNORE_PATH", "1");
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs the client with `args` in the project, killed after `DEFAULT_TIMEOUT`.
    pub fn run(&self, args: &[&str]) -> ClientOutput {
        self.run_with_timeout(args, DEFAULT_TIMEOUT)
    }

    /// Runs the client with `args` in the project; kills its whole process group on timeout.
    pub fn run_with_timeout(&self, args: &[&str], timeout: Duration) -> ClientOutput {
        use std::os::unix::process::CommandExt;
        let logs = tempfile::tempdir_in(self.root.path()).expect("log dir");
        let out_path = logs.path().join("stdout");
        let err_path = logs.path().join("stderr");
        let mut cmd = self.command(args);
        cmd.stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .process_group(0);
        let command = format!("{} {}", self.client.name(), args.join(" "));
        let start = Instant::now();
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run `{command}`: {e}"));
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for client") {
                break Some(status);
            }
            if start.elapsed() > timeout {
                // The group is the client and the processes it started (scripts, workers).
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .status();
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        ClientOutput {
            command,
            status,
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
            elapsed: start.elapsed(),
        }
    }

    /// Installs from package.json, resolving through the registry and writing the lockfile.
    pub fn install(&self) -> ClientOutput {
        self.run(self.client.install_args())
    }

    /// Installs exactly the lockfile (`npm ci`, `pnpm install --frozen-lockfile`,
    /// `yarn install --frozen-lockfile`, `yarn install --immutable`).
    pub fn install_frozen(&self) -> ClientOutput {
        self.run(self.client.frozen_install_args())
    }

    /// Adds a dependency (`name` or `name@range`).
    pub fn add(&self, spec: &str) -> ClientOutput {
        let args = self.client.add_args(spec);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args)
    }

    /// Removes node_modules, the client's install state and every cache in HOME, keeping
    /// package.json, the lockfile and the client's config: the next install has to download
    /// every tarball again.
    pub fn forget_installation(&self) {
        let dir = self.dir();
        for p in [dir.join("node_modules"), dir.join(".yarn"), dir.join(".pnp.cjs")] {
            if p.is_dir() {
                std::fs::remove_dir_all(&p).unwrap();
            } else if p.exists() {
                std::fs::remove_file(&p).unwrap();
            }
        }
        let _ = std::fs::remove_dir_all(self.home());
        std::fs::create_dir_all(self.home()).unwrap();
    }

    /// Removes the lockfile.
    pub fn remove_lockfile(&self) {
        let _ = std::fs::remove_file(self.dir().join(self.client.lockfile()));
    }

    /// The version of `name` installed at the top of node_modules.
    pub fn installed_version(&self, name: &str) -> Option<String> {
        read_version(&self.dir().join("node_modules").join(name))
    }

    /// The version of `name` as `require` would find it from inside the installed package
    /// `parent` (works for npm's hoisting and pnpm's symlinked layout alike).
    pub fn installed_dependency_version(&self, parent: &str, name: &str) -> Option<String> {
        let start = std::fs::canonicalize(self.dir().join("node_modules").join(parent)).ok()?;
        start
            .ancestors()
            .find_map(|dir| read_version(&dir.join("node_modules").join(name)))
    }

    /// Runs `node -e <script>` in the project directory (e.g. to `require` what was installed).
    pub fn node_eval(&self, script: &str) -> ClientOutput {
        let node = super::require_binary("node");
        let out = Command::new(&node)
            .args(["-e", script])
            .current_dir(self.dir())
            .env_clear()
            .env("PATH", node.parent().unwrap())
            .stdin(Stdio::null())
            .output()
            .expect("run node");
        ClientOutput {
            command: format!("node -e {script:?}"),
            status: Some(out.status),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: Duration::ZERO,
        }
    }

    pub fn lockfile_path(&self) -> PathBuf {
        self.dir().join(self.client.lockfile())
    }

    /// The lockfile's text; panics when there is none.
    pub fn lockfile_text(&self) -> String {
        let path = self.lockfile_path();
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    /// Every package the lockfile records (not the project itself).
    pub fn locked_packages(&self) -> Vec<LockedPackage> {
        let text = self.lockfile_text();
        match self.client {
            Client::Npm => parse_package_lock(&text),
            Client::Pnpm => parse_pnpm_lock(&text),
            Client::Yarn1 => parse_yarn1_lock(&text),
            Client::Yarn4 => parse_yarn4_lock(&text),
        }
    }
}

fn read_version(package_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(package_dir.join("package.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["version"].as_str().map(str::to_string)
}

/// `name@version` (or `name@range`) → (name, rest), the scope's `@` not being a separator.
fn split_at_version(spec: &str) -> Option<(&str, &str)> {
    let at = spec[1..].find('@')? + 1;
    Some((&spec[..at], &spec[at + 1..]))
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .or_else(|| s.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
        .unwrap_or(s)
}

/// package-lock.json v2/v3: the `packages` map, keyed by install path.
pub fn parse_package_lock(text: &str) -> Vec<LockedPackage> {
    let doc: serde_json::Value = serde_json::from_str(text).expect("package-lock.json is JSON");
    let mut out = Vec::new();
    for (path, entry) in doc["packages"].as_object().expect("package-lock.json has packages") {
        let Some(idx) = path.rfind("node_modules/") else {
            continue;
        };
        let name = entry["name"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| path[idx + "node_modules/".len()..].to_string());
        let field = |k: &str| entry[k].as_str().map(str::to_string);
        out.push(LockedPackage {
            name,
            version: field("version").unwrap_or_default(),
            resolved: field("resolved"),
            integrity: field("integrity"),
            checksum: None,
        });
    }
    out
}

/// pnpm-lock.yaml (v9): the `packages:` section, `resolution: {integrity: ..., tarball: ...}`.
pub fn parse_pnpm_lock(text: &str) -> Vec<LockedPackage> {
    let mut out: Vec<LockedPackage> = Vec::new();
    let mut in_packages = false;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() {
            in_packages = line.trim_end() == "packages:";
            continue;
        }
        if !in_packages {
            continue;
        }
        if let Some(key) = line.strip_prefix("  ").filter(|l| !l.starts_with(' ')) {
            let key = unquote(key.trim_end().trim_end_matches(':'));
            let key = key.split('(').next().unwrap_or(key);
            if let Some((name, version)) = split_at_version(key) {
                out.push(LockedPackage {
                    name: name.to_string(),
                    version: version.to_string(),
                    resolved: None,
                    integrity: None,
                    checksum: None,
                });
            }
        } else if let Some(res) = line.trim_start().strip_prefix("resolution:") {
            let Some(pkg) = out.last_mut() else { continue };
            let inner = res.trim().trim_start_matches('{').trim_end_matches('}');
            for part in inner.split(", ") {
                if let Some((k, v)) = part.split_once(": ") {
                    match k.trim() {
                        "integrity" => pkg.integrity = Some(unquote(v).to_string()),
                        "tarball" => pkg.resolved = Some(unquote(v).to_string()),
                        _ => {}
                    }
                }
            }
        }
    }
    out
}

/// yarn.lock of yarn 1: blocks headed by their specs, `version`, `resolved`, `integrity`.
pub fn parse_yarn1_lock(text: &str) -> Vec<LockedPackage> {
    let mut out: Vec<LockedPackage> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            let first = line.trim_end_matches(':').split(", ").next().unwrap_or("");
            let name = split_at_version(unquote(first)).map(|(n, _)| n).unwrap_or("");
            out.push(LockedPackage {
                name: name.to_string(),
                version: String::new(),
                resolved: None,
                integrity: None,
                checksum: None,
            });
            continue;
        }
        let Some(pkg) = out.last_mut() else { continue };
        let Some((key, value)) = line.trim().split_once(' ') else {
            continue;
        };
        match key {
            "version" => pkg.version = unquote(value).to_string(),
            "resolved" => pkg.resolved = Some(unquote(value).to_string()),
            "integrity" => pkg.integrity = Some(unquote(value).to_string()),
            _ => {}
        }
    }
    out
}

/// yarn.lock of yarn 2+: YAML blocks with `version`, `resolution`, `checksum`; the workspace
/// itself and `__metadata` are left out.
pub fn parse_yarn4_lock(text: &str) -> Vec<LockedPackage> {
    let mut out: Vec<LockedPackage> = Vec::new();
    let mut current: Option<LockedPackage> = None;
    let flush = |p: Option<LockedPackage>, out: &mut Vec<LockedPackage>| {
        if let Some(p) = p {
            let is_workspace = p.resolved.as_deref().is_some_and(|r| r.contains("@workspace:"));
            if !p.name.is_empty() && !is_workspace {
                out.push(p);
            }
        }
    };
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            flush(current.take(), &mut out);
            if !line.starts_with("__metadata") {
                current = Some(LockedPackage {
                    name: String::new(),
                    version: String::new(),
                    resolved: None,
                    integrity: None,
                    checksum: None,
                });
            }
            continue;
        }
        let Some(pkg) = current.as_mut() else { continue };
        if line.starts_with("    ") {
            continue; // nested maps (dependencies, bin, ...)
        }
        let Some((key, value)) = line.trim().split_once(": ") else {
            continue;
        };
        let value = unquote(value);
        match key {
            "version" => pkg.version = value.to_string(),
            "resolution" => {
                pkg.resolved = Some(value.to_string());
                if let Some((name, _)) = split_at_version(value) {
                    pkg.name = name.to_string();
                }
            }
            "checksum" => pkg.checksum = Some(value.to_string()),
            _ => {}
        }
    }
    flush(current.take(), &mut out);
    out
}
