//! What a tarball runs at install, read from its own bytes as they stream: npm runs the
//! scripts of the `package.json` inside the tarball, not the manifest the packument shows, and
//! the registry does not check that the two agree ("manifest confusion"). A version whose
//! manifest declares no install script while its tarball has one would walk around the
//! install-script policy, so every tarball is probed on its way into the cache.
//!
//! The probe follows npm's extraction: gzip (several members, as Node's zlib reads them) or a
//! plain tar; entries named by ustar prefix, GNU long names and pax `path` records; the first
//! path component stripped; links skipped (npm does not extract them). Where extraction could
//! read a path two ways (`package//package.json`, `./package.json`, letter case on macOS),
//! every reading that lands on the root `package.json` counts, and the tarball runs install
//! scripts if any of them declares one. It keeps nothing but those files.

use std::io::{self, Write};

use serde_json::Value;

/// The largest `package.json` read; a tarball with a larger one cannot be judged.
const MANIFEST_MAX: u64 = 1 << 20;
/// The most tar bytes walked (a small gzip can unpack to a great deal).
const UNPACKED_MAX: u64 = 1 << 30;
const BLOCK: usize = 512;

/// What the probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Whether the tarball runs code at install (npm's rule, as `VersionFacts`).
    Read { install_script: bool },
    /// A tar without a root `package.json`: npm has no scripts to run from it.
    NoManifest,
    /// Not a tar npg can read, or beyond the limits: its scripts are unknown.
    Unreadable,
}

impl Probe {
    /// Whether a version whose manifest declares `declared` can be trusted to run no more
    /// than that: not when the tarball has an install script its manifest does not declare,
    /// or when its scripts cannot be told.
    pub fn agrees(self, declared: bool) -> bool {
        declared || matches!(self, Probe::Read { install_script: false } | Probe::NoManifest)
    }
}

/// Feed it the tarball's bytes in order, then `finish`.
pub struct ScriptProbe {
    input: Input,
}

enum Input {
    /// The first bytes, until the gzip magic can be told.
    Sniffing(Vec<u8>),
    Gzip(Box<flate2::write::MultiGzDecoder<Walker>>),
    Plain(Walker),
    Failed,
}

impl Default for ScriptProbe {
    fn default() -> ScriptProbe {
        ScriptProbe {
            input: Input::Sniffing(Vec::new()),
        }
    }
}

impl ScriptProbe {
    pub fn update(&mut self, chunk: &[u8]) {
        if let Input::Sniffing(start) = &mut self.input {
            start.extend_from_slice(chunk);
            if start.len() < 2 {
                return;
            }
            let start = std::mem::take(start);
            self.input = match start[..2] == [0x1f, 0x8b] {
                true => Input::Gzip(Box::new(flate2::write::MultiGzDecoder::new(Walker::default()))),
                false => Input::Plain(Walker::default()),
            };
            return self.feed(&start);
        }
        self.feed(chunk);
    }

    fn feed(&mut self, bytes: &[u8]) {
        let fed = match &mut self.input {
            Input::Gzip(gz) => gz.write_all(bytes),
            Input::Plain(walker) => walker.write_all(bytes),
            Input::Sniffing(_) | Input::Failed => return,
        };
        if fed.is_err() {
            self.input = Input::Failed;
        }
    }

    pub fn finish(self) -> Probe {
        let walker = match self.input {
            Input::Gzip(gz) => gz.finish().ok(),
            Input::Plain(walker) => Some(walker),
            Input::Sniffing(_) | Input::Failed => None,
        };
        walker.map_or(Probe::Unreadable, Walker::verdict)
    }
}

/// Where the walker is in the tar stream.
#[derive(Default)]
enum Entry {
    /// Reading a 512-byte header.
    #[default]
    Header,
    /// Inside an entry's data (padded to whole blocks): `left` bytes, the kept ones into `keep`.
    Data { left: u64, keep: Option<Keep> },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    Manifest,
    LongName,
    Pax,
}

/// A tar stream walked header by header; only `package.json`, long names and pax records are
/// kept.
#[derive(Default)]
struct Walker {
    header: Vec<u8>,
    entry: Entry,
    kept: Vec<u8>,
    /// The path the next entry takes from a GNU long name or a pax record.
    next_path: Option<String>,
    /// Length of the entry being kept (its data is padded to whole blocks).
    keep_len: u64,
    /// What the root `package.json` files read declare.
    manifests: Manifests,
    binding_gyp: bool,
    walked: u64,
    broken: bool,
}

impl Write for Walker {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let n = buf.len();
        self.walked += n as u64;
        if self.broken || self.walked > UNPACKED_MAX {
            return Err(io::Error::other("tar stream unreadable or too large"));
        }
        while !buf.is_empty() {
            buf = match std::mem::take(&mut self.entry) {
                Entry::Header => {
                    let take = (BLOCK - self.header.len()).min(buf.len());
                    self.header.extend_from_slice(&buf[..take]);
                    if self.header.len() == BLOCK {
                        let header = std::mem::take(&mut self.header);
                        self.on_header(&header);
                    }
                    &buf[take..]
                }
                Entry::Data { left, keep } => {
                    let take = (left.min(buf.len() as u64)) as usize;
                    if keep.is_some() {
                        self.kept.extend_from_slice(&buf[..take]);
                    }
                    let left = left - take as u64;
                    match left {
                        0 => self.on_data_end(keep),
                        _ => self.entry = Entry::Data { left, keep },
                    }
                    &buf[take..]
                }
            };
            if self.broken {
                return Err(io::Error::other("tar stream unreadable"));
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Walker {
    fn on_header(&mut self, h: &[u8]) {
        if h.iter().all(|b| *b == 0) {
            return; // end-of-archive blocks
        }
        // npm's tar warns of a block that is not a header and reads the next one as a header:
        // so does the probe, or junk in front would hide the entries after it.
        if !checksum_ok(h) {
            return;
        }
        let Some(size) = octal(&h[124..136]) else {
            self.broken = true;
            return;
        };
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        let kind = h[156];
        let keep = match kind {
            b'L' => Some(Keep::LongName),
            b'x' => Some(Keep::Pax),
            b'0' | 0 | b'7' => {
                let path = self.next_path.take().unwrap_or_else(|| header_path(h));
                if at_root(&path, "binding.gyp") {
                    self.binding_gyp = true;
                }
                at_root(&path, "package.json").then_some(Keep::Manifest)
            }
            // Global pax records and GNU long link names leave the next entry's path alone.
            b'g' | b'K' => None,
            _ => {
                // Links, directories...: they take the path given for them.
                self.next_path = None;
                None
            }
        };
        let limit = match keep {
            Some(Keep::Manifest) => MANIFEST_MAX,
            Some(_) => 64 * 1024,
            None => u64::MAX,
        };
        if size > limit {
            self.broken = true;
            return;
        }
        self.kept.clear();
        self.keep_len = size;
        match padded {
            0 => self.on_data_end(keep),
            _ => self.entry = Entry::Data { left: padded, keep },
        }
    }

    fn on_data_end(&mut self, keep: Option<Keep>) {
        let mut kept = std::mem::take(&mut self.kept);
        kept.truncate(self.keep_len as usize);
        match keep {
            Some(Keep::Manifest) => self.manifests.read(&kept),
            Some(Keep::LongName) => {
                let name = kept.split(|b| *b == 0).next().unwrap_or_default();
                self.next_path = Some(String::from_utf8_lossy(name).into_owned());
            }
            Some(Keep::Pax) => {
                if let Some(path) = pax_path(&kept) {
                    self.next_path = Some(path);
                }
            }
            None => {}
        }
    }

    fn verdict(self) -> Probe {
        let m = &self.manifests;
        // A tar cut short fails npm's extraction: judged by what it holds so far.
        if self.broken || m.unparsed && !m.parsed {
            return Probe::Unreadable;
        }
        if !m.parsed {
            return Probe::NoManifest;
        }
        // npm turns a binding.gyp into `install: node-gyp rebuild` unless told not to.
        let gyp = self.binding_gyp && !m.all_gypfile_false;
        Probe::Read {
            install_script: m.hook || gyp,
        }
    }
}

/// What the root `package.json` files of a tarball declare, together.
struct Manifests {
    /// At least one was JSON.
    parsed: bool,
    /// At least one was not.
    unparsed: bool,
    /// One has an install hook.
    hook: bool,
    /// Every one says `gypfile: false`.
    all_gypfile_false: bool,
}

impl Default for Manifests {
    fn default() -> Manifests {
        Manifests {
            parsed: false,
            unparsed: false,
            hook: false,
            all_gypfile_false: true,
        }
    }
}

impl Manifests {
    fn read(&mut self, bytes: &[u8]) {
        // One that is not JSON cannot be the one npm installs by (it would fail).
        let Ok(Value::Object(manifest)) = serde_json::from_slice::<Value>(bytes) else {
            self.unparsed = true;
            return;
        };
        self.parsed = true;
        let scripts = manifest.get("scripts").and_then(Value::as_object);
        let script = |k: &str| scripts.is_some_and(|s| s.contains_key(k));
        self.hook |= script("preinstall") || script("install") || script("postinstall");
        self.all_gypfile_false &= manifest.get("gypfile") == Some(&Value::Bool(false));
    }
}

/// The entry's path from a ustar header: `prefix/name`.
fn header_path(h: &[u8]) -> String {
    let field = |b: &[u8]| String::from_utf8_lossy(b.split(|c| *c == 0).next().unwrap_or_default()).into_owned();
    let name = field(&h[0..100]);
    let prefix = match &h[257..263] == b"ustar\0" || &h[257..262] == b"ustar" {
        true => field(&h[345..500]),
        false => String::new(),
    };
    match prefix.is_empty() {
        true => name,
        false => format!("{prefix}/{name}"),
    }
}

/// Whether `path` can land on `file` at the package root: npm strips the first component;
/// empty and `.` components are read both as kept (before the strip) and as dropped, and
/// letters in either case (a case-insensitive disk merges them).
fn at_root(path: &str, file: &str) -> bool {
    let path = path.to_ascii_lowercase();
    let literal: Vec<&str> = path.split('/').skip(1).filter(|c| !c.is_empty() && *c != ".").collect();
    let cleaned: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").skip(1).collect();
    literal == [file] || cleaned == [file]
}

/// The header's checksum: the sum of its bytes with the checksum field as spaces (unsigned,
/// or signed as some old tars wrote it).
fn checksum_ok(h: &[u8]) -> bool {
    let Some(stored) = octal(&h[148..156]) else {
        return false;
    };
    let field = 148..156;
    let byte = |(i, b): (usize, &u8)| if field.contains(&i) { b' ' } else { *b };
    let unsigned: u64 = h.iter().enumerate().map(|x| u64::from(byte(x))).sum();
    let signed: i64 = h.iter().enumerate().map(|x| i64::from(byte(x) as i8)).sum();
    stored == unsigned || stored as i64 == signed
}

/// A tar number: octal text, or base-256 when the high bit is set.
fn octal(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut n: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            n = n.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(n);
    }
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    match text.is_empty() {
        true => Some(0),
        false => u64::from_str_radix(text, 8).ok(),
    }
}

/// The `path` of pax records (`<len> path=<value>\n`).
fn pax_path(records: &[u8]) -> Option<String> {
    let mut path = None;
    let mut rest = records;
    while !rest.is_empty() {
        let space = rest.iter().position(|b| *b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        let record = rest.get(space + 1..len)?;
        if let Some(value) = record.strip_prefix(b"path=") {
            let value = value.strip_suffix(b"\n").unwrap_or(value);
            path = Some(String::from_utf8_lossy(value).into_owned());
        }
        rest = &rest[len..];
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar with these regular files; `pax` gives the first one its path by a pax record.
    fn tar(files: &[(&str, &[u8])], pax: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (i, (path, data)) in files.iter().enumerate() {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            if pax && i == 0 {
                b.append_pax_extensions([("path", path.as_bytes())]).unwrap();
                h.set_path("package/innocent.txt").unwrap();
                h.set_cksum();
                b.append(&h, *data).unwrap();
            } else {
                b.append_data(&mut h, path, *data).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Probed in chunks of `chunk` bytes.
    fn probe(bytes: &[u8], chunk: usize) -> Probe {
        let mut p = ScriptProbe::default();
        bytes.chunks(chunk).for_each(|c| p.update(c));
        p.finish()
    }

    const HOOK: &[u8] = br#"{"name":"p","scripts":{"postinstall":"node evil.js"}}"#;
    const CLEAN: &[u8] = br#"{"name":"p","scripts":{"test":"x"}}"#;

    fn runs(bytes: &[u8]) -> bool {
        let answers: Vec<Probe> = [1, 7, 512, 100_000].iter().map(|c| probe(bytes, *c)).collect();
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "chunking changed the answer: {answers:?}"
        );
        match answers[0] {
            Probe::Read { install_script } => install_script,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_the_root_package_json_in_gzip_or_plain() {
        let clean = tar(&[("package/package.json", CLEAN), ("package/index.js", b"1")], false);
        assert!(!runs(&gz(&clean)));
        assert!(!runs(&clean));
        let hook = tar(&[("package/index.js", b"1"), ("package/package.json", HOOK)], false);
        assert!(runs(&gz(&hook)));
        let nested = tar(
            &[("package/package.json", CLEAN), ("package/lib/package.json", HOOK)],
            false,
        );
        assert!(!runs(&gz(&nested)), "a nested package.json is not the package's");
    }

    #[test]
    fn binding_gyp_is_an_install_script_unless_opted_out() {
        let gyp = tar(
            &[("package/package.json", CLEAN), ("package/binding.gyp", b"{}")],
            false,
        );
        assert!(runs(&gz(&gyp)));
        let opted_out = br#"{"name":"p","gypfile":false}"#;
        let off = tar(
            &[("package/package.json", opted_out), ("package/binding.gyp", b"{}")],
            false,
        );
        assert!(!runs(&gz(&off)));
    }

    #[test]
    fn every_reading_of_a_path_counts() {
        // A clean manifest first, then one extraction would also write as the root one.
        for evil in [
            "package//package.json",
            "package/./package.json",
            "package/PACKAGE.JSON",
        ] {
            let t = tar(&[("package/package.json", CLEAN), (evil, HOOK)], false);
            assert!(runs(&gz(&t)), "{evil}");
        }
        // The path from a pax record, not the header's.
        let t = tar(&[("package/package.json", HOOK), ("package/other.json", CLEAN)], true);
        assert!(runs(&gz(&t)));
    }

    #[test]
    fn long_names_and_several_gzip_members() {
        // A GNU long name (a path over 100 bytes): the first component is stripped anyway.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(HOOK.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, format!("{}/package.json", "p".repeat(120)), HOOK)
            .unwrap();
        let long = b.into_inner().unwrap();
        assert!(long.windows(13).any(|w| w == b"././@LongLink"), "a GNU long name entry");
        assert!(runs(&gz(&long)));

        // The manifest in the second gzip member.
        let first = tar(&[("package/index.js", b"1")], false);
        let second = tar(&[("package/package.json", HOOK)], false);
        let mut two = gz(&first[..first.len() - 1024]);
        two.extend(gz(&second));
        assert!(runs(&two));
    }

    #[test]
    fn garbage_and_limits_are_unreadable() {
        let no_manifest = gz(&tar(&[("package/index.js", b"1")], false));
        assert_eq!(probe(&no_manifest, 100), Probe::NoManifest);
        assert!(Probe::NoManifest.agrees(false));
        let not_json = gz(&tar(&[("package/package.json", b"{oops")], false));
        assert_eq!(probe(&not_json, 100), Probe::Unreadable);
        assert!(!Probe::Unreadable.agrees(false));
        assert!(Probe::Unreadable.agrees(true));
        assert!(!Probe::Read { install_script: true }.agrees(false));
        assert_eq!(probe(b"", 10), Probe::Unreadable);
        assert_eq!(
            probe(b"not a tarball at all", 3),
            Probe::NoManifest,
            "cut inside a header"
        );
        assert_eq!(probe(&[9u8; 4096], 100), Probe::NoManifest, "blocks npm would skip");
        assert_eq!(probe(&gz(b"\x00garbage"), 3), Probe::NoManifest, "a gzip of no tar");
        let mut truncated = gz(&tar(&[("package/package.json", HOOK)], false));
        truncated.truncate(truncated.len() / 2);
        assert_eq!(probe(&truncated, 10), Probe::Unreadable);
        let big = vec![b' '; (MANIFEST_MAX + 1) as usize];
        assert_eq!(
            probe(&gz(&tar(&[("package/package.json", &big)], false)), 4096),
            Probe::Unreadable
        );
    }

    #[test]
    fn tar_numbers() {
        assert_eq!(octal(b"0000644\0"), Some(0o644));
        assert_eq!(octal(b"   \0"), Some(0));
        assert_eq!(octal(&[0x80, 0, 0, 1, 0]), Some(256));
        assert_eq!(octal(b"9"), None);
        assert_eq!(pax_path(b"21 path=package/a.js\n"), Some("package/a.js".into()));
        assert_eq!(pax_path(b"99 path=x\n"), None);
        let mut header = tar(&[("package/package.json", CLEAN)], false);
        assert!(checksum_ok(&header[..512]));
        header[0] ^= 1;
        assert!(!checksum_ok(&header[..512]));
        assert_eq!(
            probe(&header, 512),
            Probe::NoManifest,
            "a bad header is skipped, as npm does"
        );
        // Junk in front of a tarball hides nothing.
        let mut junk = vec![7u8; 1024];
        junk.extend(tar(&[("package/package.json", HOOK)], false));
        assert!(runs(&junk));
    }
}
