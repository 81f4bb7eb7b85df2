//! Typosquats: names made to be mistaken for a popular one. A name is compared with a list of
//! popular names (data/popular-npm-names.txt, made by scripts/popular-names, or the file
//! TYPOSQUAT_LIST names); a name on the list is never a suspect.
//!
//! What counts as "looks like", most specific first:
//! - separators swapped or dropped (`react_dom`, `reactdom` for `react-dom`), and ASCII
//!   look-alikes (`l0dash`: `1`/`l`, `0`/`o`, `5`/`s`, `3`/`e`, `rn`/`m`, `vv`/`w`, case),
//!   both by one normal form per popular name (names under `MIN_LOOKALIKE_LEN` are left out:
//!   `he`/`h3`, `ms`/`m5` are different packages);
//! - scope confusion: a name equal to a popular scoped one with the scope folded in
//!   (`babelcore`, `babel-core` for `@babel/core`) or the other way round (`@lodash/merge`
//!   for `lodash.merge`), or a scope one edit away from a popular one with the same bare
//!   name (`@tpyes/node`), or a bare name one edit from a popular unscoped one that the scope
//!   mirrors (`@types/reac`: `react` and `@types/react` are popular). Otherwise a name one
//!   edit from a popular name in that name's own scope is not a suspect (`@babel/cor`,
//!   `@aws-sdk/client-sqs`): only the scope's owner can publish there;
//! - Damerau–Levenshtein distance 1 (a character added, removed, changed, or two neighbours
//!   swapped), when the part that differs has at least `MIN_EDIT_LEN` characters (most short
//!   names are one edit from a popular one: `ms`, `qs`, `jest`/`just`/`test`), and not
//!   when a digit replaces a digit (`es2015`/`es2016`, versions in names).
//!
//! Fast on the request path: no scan of the list. Edits go through a symmetric-deletion
//! index (every name with one character deleted, hashed, to the names it came from), so a
//! lookup hashes the name and its deletions (in one pass) and checks the few candidates for
//! real.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Serialize;

use super::names::NameSet;
use crate::npm::name::PackageName;

/// The list npg ships (see its header for its source and date).
const BUILT_IN: &str = include_str!("../../data/popular-npm-names.txt");

/// Edits only count on a differing part (bare name or scope) at least this long.
pub(crate) const MIN_EDIT_LEN: usize = 5;

/// Look-alikes only count for popular names whose normal form is at least this long.
pub(crate) const MIN_LOOKALIKE_LEN: usize = 3;

/// How a name resembles a popular one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Similarity {
    /// Damerau–Levenshtein distance 1.
    Edit,
    /// `-`, `_`, `.` swapped or dropped.
    Separators,
    /// A scope folded into the name, or out of it, or misspelt.
    Scope,
    /// Characters that look alike in ASCII.
    Homoglyph,
}

impl Similarity {
    pub(crate) fn words(self) -> &'static str {
        match self {
            Similarity::Edit => "one edit away",
            Similarity::Separators => "separators changed",
            Similarity::Scope => "scope confusion",
            Similarity::Homoglyph => "look-alike characters",
        }
    }
}

/// A name that looks like a popular one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Suspect {
    pub like: String,
    pub how: Similarity,
}

impl Suspect {
    /// `looks like react, one edit away`.
    pub(crate) fn reason(&self) -> String {
        format!("looks like {}, {}", self.like, self.how.words())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("line {line}: `{name}` is not a package name ({why})")]
    BadName {
        line: usize,
        name: String,
        why: crate::npm::name::NameError,
    },
    #[error("lists no package name")]
    Empty,
}

/// Where a normal form came from.
#[derive(Debug, Clone, Copy)]
struct Lookalike {
    index: u32,
    /// The form of a scoped name with its scope folded in (`babelcore` for `@babel/core`).
    folded: bool,
}

/// The popular names, indexed.
pub struct Typosquats {
    /// Most popular first (the list's order): the first match is the one named.
    names: Vec<String>,
    popular: HashSet<String>,
    lookalikes: HashMap<Vec<u8>, Lookalike>,
    /// Hash of a name or of a name with one character deleted → the names it came from.
    deletions: Deletions,
    source: String,
}

impl std::fmt::Debug for Typosquats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Typosquats({} names from {})", self.names.len(), self.source)
    }
}

impl Typosquats {
    /// The list npg ships.
    pub fn built_in() -> Typosquats {
        Typosquats::parse(BUILT_IN, "built-in").expect("the shipped list is valid (tested)")
    }

    /// A list file: one name per line, `#` comments and blank lines ignored.
    pub fn load(path: &Path) -> Result<Typosquats, ListError> {
        let text = std::fs::read_to_string(path).map_err(|source| ListError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Typosquats::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, source: &str) -> Result<Typosquats, ListError> {
        let mut list = Typosquats {
            names: Vec::new(),
            popular: HashSet::new(),
            lookalikes: HashMap::new(),
            deletions: Deletions::default(),
            source: source.to_string(),
        };
        for (n, line) in text.lines().enumerate() {
            let name = line.trim();
            if name.is_empty() || name.starts_with('#') {
                continue;
            }
            PackageName::parse(name).map_err(|why| ListError::BadName {
                line: n + 1,
                name: name.to_string(),
                why,
            })?;
            if list.popular.insert(name.to_string()) {
                list.add(name);
            }
        }
        if list.names.is_empty() {
            return Err(ListError::Empty);
        }
        list.deletions.index();
        Ok(list)
    }

    fn add(&mut self, name: &str) {
        let index = self.names.len() as u32;
        self.names.push(name.to_string());
        let bytes = name.as_bytes();
        let mut forms = vec![(lookalike(bytes), false)];
        if let (Some(scope), bare) = parts(bytes) {
            forms.push((lookalike(&[scope, bare].concat()), true));
        }
        for (form, folded) in forms {
            if form.len() >= MIN_LOOKALIKE_LEN {
                // The more popular name keeps a form two names share.
                self.lookalikes.entry(form).or_insert(Lookalike { index, folded });
            }
        }
        self.deletions.pairs.extend(keys(bytes).map(|key| (key, index)));
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Where the list came from: `built-in` or its file.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The popular name `name` looks like, if any (never for a name on the list).
    pub fn suspect(&self, name: &str) -> Option<Suspect> {
        if self.popular.contains(name) {
            return None;
        }
        let bytes = name.as_bytes();
        self.lookalike(bytes)
            .or_else(|| self.edit(bytes))
            .or_else(|| self.scoped_edit(bytes))
    }

    /// A scoped name whose bare name is one edit from a popular unscoped one whose scope
    /// mirrors it (`@types/reac`: `react` and `@types/react` are both popular): the types or
    /// plugin of a popular package, misspelt. Other scopes choose their own bare names
    /// (`@antfu/utils` is not `utila`).
    fn scoped_edit(&self, name: &[u8]) -> Option<Suspect> {
        let (Some(scope), bare) = parts(name) else { return None };
        let found = self.edit(bare)?;
        let mirrored = format!("@{}/{}", String::from_utf8_lossy(scope), found.like);
        self.popular.contains(&mirrored).then_some(Suspect {
            how: Similarity::Scope,
            ..found
        })
    }

    fn lookalike(&self, name: &[u8]) -> Option<Suspect> {
        let found = |form: &[u8]| self.lookalikes.get(form).copied();
        let (how, index) = match (found(&lookalike(name)), parts(name)) {
            (Some(l), _) if l.folded => (Similarity::Scope, l.index),
            (Some(l), _) => {
                let popular = self.names[l.index as usize].as_bytes();
                if same_owner(name, popular) {
                    return None;
                }
                let how = match without_separators(name) == without_separators(popular) {
                    true => Similarity::Separators,
                    false => Similarity::Homoglyph,
                };
                (how, l.index)
            }
            // A scoped name that is a popular name with a scope taken out of it.
            (None, (Some(scope), bare)) => (Similarity::Scope, found(&lookalike(&[scope, bare].concat()))?.index),
            (None, (None, _)) => return None,
        };
        Some(self.suspect_of(index, how))
    }

    fn edit(&self, name: &[u8]) -> Option<Suspect> {
        let mut best: Option<(u32, Similarity)> = None;
        for key in keys(name) {
            for index in self.deletions.get(key) {
                if best.is_some_and(|(b, _)| b <= index) {
                    continue;
                }
                if let Some(how) = edit_similarity(name, self.names[index as usize].as_bytes()) {
                    best = Some((index, how));
                }
            }
        }
        best.map(|(index, how)| self.suspect_of(index, how))
    }

    fn suspect_of(&self, index: u32, how: Similarity) -> Suspect {
        Suspect {
            like: self.names[index as usize].clone(),
            how,
        }
    }
}

/// `(scope, bare)` of `@scope/bare`; `(None, name)` for an unscoped name.
fn parts(name: &[u8]) -> (Option<&[u8]>, &[u8]) {
    let scoped = name.strip_prefix(b"@").and_then(|rest| {
        let slash = rest.iter().position(|&b| b == b'/')?;
        Some((&rest[..slash], &rest[slash + 1..]))
    });
    match scoped {
        Some((scope, bare)) => (Some(scope), bare),
        None => (None, name),
    }
}

/// Whether both names are in the same scope: a scope has one owner, so a name in a popular
/// name's own scope (`@aws-sdk/client-sqs` next to `@aws-sdk/client-sts`) is no one else's
/// squat.
fn same_owner(name: &[u8], popular: &[u8]) -> bool {
    matches!((parts(name).0, parts(popular).0), (Some(a), Some(b)) if a == b)
}

fn is_separator(b: u8) -> bool {
    matches!(b, b'-' | b'_' | b'.')
}

fn without_separators(name: &[u8]) -> Vec<u8> {
    name.iter().copied().filter(|&b| !is_separator(b)).collect()
}

/// The form two names share when they differ only by separators, case or ASCII look-alikes.
fn lookalike(name: &[u8]) -> Vec<u8> {
    let mut plain = Vec::with_capacity(name.len());
    for &b in name.iter().filter(|&&b| !is_separator(b)) {
        plain.push(match b.to_ascii_lowercase() {
            b'1' => b'l',
            b'0' => b'o',
            b'5' => b's',
            b'3' => b'e',
            other => other,
        });
    }
    let mut form = Vec::with_capacity(plain.len());
    let mut i = 0;
    while let Some(&b) = plain.get(i) {
        let pair = match (b, plain.get(i + 1)) {
            (b'r', Some(b'n')) => Some(b'm'),
            (b'v', Some(b'v')) => Some(b'w'),
            _ => None,
        };
        form.push(pair.unwrap_or(b));
        i += if pair.is_some() { 2 } else { 1 };
    }
    form
}

/// The base of the polynomial hash below (odd, so it has an inverse modulo 2^64).
const BASE: u64 = 0x0100_0000_01b3;

/// BASE's inverse modulo 2^64 (Newton's iteration: each step doubles the correct bits).
const BASE_INVERSE: u64 = {
    let mut x = BASE;
    let mut i = 0;
    while i < 6 {
        x = x.wrapping_mul(2u64.wrapping_sub(BASE.wrapping_mul(x)));
        i += 1;
    }
    x
};

/// The polynomial hash of a name, `Σ name[j]·BASE^(n-1-j)` modulo 2^64.
fn hash(name: &[u8]) -> u64 {
    name.iter()
        .fold(0, |h, &b| h.wrapping_mul(BASE).wrapping_add(u64::from(b)))
}

/// The deletion index: (key, name) pairs grouped by bucket, a bucket per pair or so, and where
/// each bucket starts; a lookup reads one bucket, as in a map. With the built-in list npg idles
/// in 2 MB less than with a map of lists (anonymous memory 4.9 MB instead of 7.0).
#[derive(Default)]
struct Deletions {
    pairs: Vec<(u64, u32)>,
    starts: Vec<u32>,
    shift: u32,
}

impl Deletions {
    /// The keys are hashes already: spreading their bits picks the bucket.
    fn bucket(&self, key: u64) -> usize {
        ((key ^ (key >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize
    }

    /// Groups the pairs added by bucket.
    fn index(&mut self) {
        let bits = self.pairs.len().next_power_of_two().trailing_zeros().max(1);
        self.shift = 64 - bits;
        let mut pairs = std::mem::take(&mut self.pairs);
        pairs.sort_unstable_by_key(|&(key, name)| (self.bucket(key), key, name));
        pairs.dedup();
        let mut starts = vec![0u32; (1 << bits) + 1];
        for &(key, _) in &pairs {
            starts[self.bucket(key) + 1] += 1;
        }
        for b in 1..starts.len() {
            starts[b] += starts[b - 1];
        }
        (self.pairs, self.starts) = (pairs, starts);
    }

    /// The names a key came from.
    fn get(&self, key: u64) -> impl Iterator<Item = u32> + '_ {
        let b = self.bucket(key);
        let range = match self.starts.get(b..b + 2) {
            Some(&[from, to]) => from as usize..to as usize,
            _ => 0..0,
        };
        let pairs = self.pairs[range].iter();
        pairs.filter(move |&&(k, _)| k == key).map(|&(_, name)| name)
    }
}

/// The deletion index's keys of a name: its hash and the hash of each of its one-character
/// deletions, all in one pass (no string built): deleting `name[i]` leaves
/// `prefix·BASE^(n-1-i) + suffix`, where `prefix` is the hash of `name[..i]` and `suffix` what
/// `name[i+1..]` adds to the whole hash.
fn keys(name: &[u8]) -> impl Iterator<Item = u64> + '_ {
    let whole = hash(name);
    let mut power = (1..name.len()).fold(1u64, |p, _| p.wrapping_mul(BASE)); // BASE^(n-1)
    let mut prefix = 0u64;
    let deletions = name.iter().map(move |&b| {
        let through = prefix.wrapping_mul(BASE).wrapping_add(u64::from(b));
        let suffix = whole.wrapping_sub(through.wrapping_mul(power));
        let key = prefix.wrapping_mul(power).wrapping_add(suffix);
        prefix = through;
        power = power.wrapping_mul(BASE_INVERSE);
        key
    });
    std::iter::once(whole).chain(deletions)
}

/// One edit between two different names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edit {
    Add,
    Remove,
    Change(u8, u8),
    Swap,
}

/// The edit that makes `b` of `a`, when exactly one does (Damerau–Levenshtein distance 1).
fn one_edit(a: &[u8], b: &[u8]) -> Option<Edit> {
    let same = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    match a.len() as isize - b.len() as isize {
        0 if same == a.len() => None,
        0 if a[same + 1..] == b[same + 1..] => Some(Edit::Change(a[same], b[same])),
        0 if same + 1 < a.len()
            && a[same] == b[same + 1]
            && a[same + 1] == b[same]
            && a[same + 2..] == b[same + 2..] =>
        {
            Some(Edit::Swap)
        }
        1 if a[same + 1..] == b[same..] => Some(Edit::Add),
        -1 if a[same..] == b[same + 1..] => Some(Edit::Remove),
        _ => None,
    }
}

/// How `name` resembles `popular` by one edit, if it counts (see the module's doc).
fn edit_similarity(name: &[u8], popular: &[u8]) -> Option<Similarity> {
    let edit = one_edit(name, popular)?;
    if let Edit::Change(x, y) = edit
        && x.is_ascii_digit()
        && y.is_ascii_digit()
    {
        return None;
    }
    if same_owner(name, popular) {
        return None;
    }
    let ((scope, bare), (popular_scope, popular_bare)) = (parts(name), parts(popular));
    let (how, differing) = if scope == popular_scope {
        (Similarity::Edit, popular_bare)
    } else if bare == popular_bare {
        (Similarity::Scope, popular_scope.unwrap_or_default())
    } else {
        (Similarity::Edit, popular)
    };
    (differing.len() >= MIN_EDIT_LEN).then_some(how)
}

/// What npg does with a suspect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Served, with a notice to npm users and a log line.
    Warn,
    /// Refused as a whole package.
    Block,
}

impl Action {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::Warn => "warn",
            Action::Block => "block",
        }
    }
}

/// The typosquat rule in force: the list, what to do, and the names exempt from it.
#[derive(Debug)]
pub struct TyposquatRule {
    pub action: Action,
    pub list: Typosquats,
    allow: NameSet,
}

impl TyposquatRule {
    /// `allow` holds names or `/regex/` patterns (TYPOSQUAT_ALLOW).
    pub fn new(action: Action, list: Typosquats, allow: &[String]) -> anyhow::Result<TyposquatRule> {
        Ok(TyposquatRule {
            action,
            list,
            allow: NameSet::parse(allow, "TYPOSQUAT_ALLOW")?,
        })
    }

    /// The popular name `name` looks like, unless it is exempt.
    pub(crate) fn suspect(&self, name: &str) -> Option<Suspect> {
        self.list.suspect(name).filter(|_| !self.allow.contains(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> Typosquats {
        let names = "# test list\nreact\nreact-dom\nlodash\nlodash.merge\n@babel/core\n@types/react\n\
                     @types/node\nexpress\nmime\nms\nqs\nhe\nes2015-preset\ncolors\ncolor\njest\n";
        Typosquats::parse(names, "test").unwrap()
    }

    fn check(name: &str) -> Option<(String, Similarity)> {
        list().suspect(name).map(|s| (s.like, s.how))
    }

    fn like(popular: &str, how: Similarity) -> Option<(String, Similarity)> {
        Some((popular.to_string(), how))
    }

    #[test]
    fn one_edit_away() {
        use Similarity::Edit;
        assert_eq!(check("reactt"), like("react", Edit), "added");
        assert_eq!(check("reac"), like("react", Edit), "removed");
        assert_eq!(check("raect"), like("react", Edit), "swapped");
        assert_eq!(check("expresz"), like("express", Edit), "changed");
        assert_eq!(check("lodahs"), like("lodash", Edit));
        assert_eq!(check("react-dmo"), like("react-dom", Edit));
    }

    #[test]
    fn separators_swapped_or_dropped() {
        use Similarity::Separators;
        assert_eq!(check("reactdom"), like("react-dom", Separators));
        assert_eq!(check("react_dom"), like("react-dom", Separators));
        assert_eq!(check("react.dom"), like("react-dom", Separators));
        assert_eq!(check("lodash-merge"), like("lodash.merge", Separators));
        assert_eq!(check("lo-dash"), like("lodash", Separators));
    }

    #[test]
    fn scope_confusion() {
        use Similarity::Scope;
        assert_eq!(check("babelcore"), like("@babel/core", Scope), "scope folded in");
        assert_eq!(check("babel-core"), like("@babel/core", Scope));
        assert_eq!(check("types_node"), like("@types/node", Scope));
        assert_eq!(check("@lodash/merge"), like("lodash.merge", Scope), "scope taken out");
        assert_eq!(check("@typse/node"), like("@types/node", Scope), "scope misspelt");
        assert_eq!(check("@tyes/react"), like("@types/react", Scope));
        assert_eq!(check("@evil/react"), None, "a popular bare name in another scope");
        // The bare name one edit from a popular unscoped one, in any scope.
        assert_eq!(check("@types/reac"), like("react", Scope), "the issue's example");
        assert_eq!(check("@evil/expresss"), None, "a scope that does not mirror express");
        // Only the scope's owner publishes in it: their own neighbours are not squats.
        assert_eq!(check("@babel/cor"), None);
    }

    #[test]
    fn ascii_homoglyphs() {
        use Similarity::Homoglyph;
        assert_eq!(check("l0dash"), like("lodash", Homoglyph));
        assert_eq!(check("1odash"), like("lodash", Homoglyph));
        assert_eq!(
            check("rnime"),
            like("mime", Homoglyph),
            "rn for m, even on a short name"
        );
        assert_eq!(check("expre55"), like("express", Homoglyph));
        assert_eq!(check("r3act"), like("react", Homoglyph));
        assert_eq!(check("co1ors"), like("colors", Homoglyph));
        assert_eq!(check("l0-dash"), like("lodash", Homoglyph), "with a separator too");
        assert_eq!(check("React"), like("react", Homoglyph), "case (legacy names)");
        let w = Typosquats::parse("webpack\n", "t").unwrap();
        assert_eq!(w.suspect("vvebpack").map(|s| s.how), Some(Homoglyph));
    }

    #[test]
    fn negatives() {
        for popular in ["react", "react-dom", "@babel/core", "color", "colors", "ms", "jest"] {
            assert_eq!(check(popular), None, "{popular} is on the list");
        }
        for far in [
            "left-pad",
            "vue",
            "@myorg/react-widgets",
            "reactive-forms",
            "totally-unrelated",
        ] {
            assert_eq!(check(far), None, "{far}");
        }
        for short in ["mss", "m", "q", "qs1", "jset", "just", "hes", "h3", "m5"] {
            assert_eq!(check(short), None, "{short}: too short for edits and look-alikes");
        }
        assert_eq!(check("es2016-preset"), None, "a digit for a digit");
        assert_eq!(check("rea"), None, "two edits");
        assert_eq!(check("raecd"), None, "two edits");
    }

    /// The deletion index finds what a scan of the whole list would, for every one-edit
    /// variant of every name (and some two edits away).
    #[test]
    fn the_index_finds_what_a_scan_finds() {
        let list = list();
        let scan = |name: &[u8]| {
            let hit = list
                .names
                .iter()
                .enumerate()
                .find_map(|(i, p)| Some((i, edit_similarity(name, p.as_bytes())?)));
            hit.map(|(i, how)| list.suspect_of(i as u32, how))
        };
        let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789-./@";
        let mut variants = Vec::new();
        for name in &list.names {
            let n = name.as_bytes();
            for i in 0..=n.len() {
                variants.push([&n[..i.min(n.len())], &n[(i + 1).min(n.len())..]].concat());
                for &c in alphabet {
                    variants.push([&n[..i], &[c], &n[i..]].concat());
                    if i < n.len() {
                        variants.push([&n[..i], &[c], &n[i + 1..]].concat());
                        variants.push([&n[..i], &[c, c], &n[i + 1..]].concat());
                    }
                }
                if i + 1 < n.len() {
                    variants.push([&n[..i], &[n[i + 1], n[i]], &n[i + 2..]].concat());
                }
            }
        }
        let mut found = 0;
        for v in &variants {
            if list.popular.contains(std::str::from_utf8(v).unwrap()) {
                continue;
            }
            let indexed = list.edit(v);
            found += usize::from(indexed.is_some());
            assert_eq!(indexed, scan(v), "{}", String::from_utf8_lossy(v));
        }
        assert!(found > 1000, "{found} of {}", variants.len());
    }

    #[test]
    fn the_more_popular_name_is_named() {
        let list = Typosquats::parse("lodash\nlodish\n", "t").unwrap();
        assert_eq!(list.suspect("lodesh").unwrap().like, "lodash");
        let list = Typosquats::parse("lodish\nlodash\n", "t").unwrap();
        assert_eq!(list.suspect("lodesh").unwrap().like, "lodish");
    }

    #[test]
    fn a_deletion_key_is_the_hash_of_the_deleted_name() {
        assert_eq!(BASE.wrapping_mul(BASE_INVERSE), 1);
        for name in [&b"lodash"[..], b"@types/node", b"a", b""] {
            let keys: Vec<u64> = keys(name).collect();
            assert_eq!(keys[0], hash(name));
            for i in 0..name.len() {
                assert_eq!(keys[i + 1], hash(&[&name[..i], &name[i + 1..]].concat()), "{i}");
            }
        }
    }

    #[test]
    fn one_edit_exactly() {
        assert_eq!(one_edit(b"abc", b"abc"), None);
        assert_eq!(one_edit(b"abcd", b"abc"), Some(Edit::Add));
        assert_eq!(one_edit(b"xabc", b"abc"), Some(Edit::Add));
        assert_eq!(one_edit(b"abc", b"abcd"), Some(Edit::Remove));
        assert_eq!(one_edit(b"abc", b"abd"), Some(Edit::Change(b'c', b'd')));
        assert_eq!(one_edit(b"bac", b"abc"), Some(Edit::Swap));
        assert_eq!(one_edit(b"acb", b"abc"), Some(Edit::Swap));
        assert_eq!(one_edit(b"cab", b"abc"), None);
        assert_eq!(one_edit(b"abcde", b"abc"), None);
        assert_eq!(one_edit(b"", b"a"), Some(Edit::Remove));
        assert_eq!(one_edit(b"a", b""), Some(Edit::Add));
    }

    #[test]
    fn bad_lists_say_where() {
        let err = Typosquats::parse("react\nNot A Name\n", "t").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("line 2: `Not A Name` is not a package name"),
            "{err}"
        );
        assert!(matches!(
            Typosquats::parse("# only comments\n\n", "t"),
            Err(ListError::Empty)
        ));
        let missing = Typosquats::load(Path::new("/nonexistent/list.txt")).unwrap_err();
        assert!(
            missing.to_string().starts_with("cannot read /nonexistent/list.txt"),
            "{missing}"
        );
    }

    #[test]
    fn the_shipped_list() {
        let list = Typosquats::built_in();
        assert!(list.len() >= 1000, "{}", list.len());
        assert_eq!(list.source(), "built-in");
        assert!(
            BUILT_IN.starts_with("# Popular npm package names"),
            "the header names the source"
        );
        for popular in ["react", "lodash", "express", "@babel/core", "@types/node"] {
            assert_eq!(list.suspect(popular), None, "{popular} is on the shipped list");
        }
        assert_eq!(list.suspect("expresss").unwrap().like, "express");
        assert_eq!(list.suspect("l0dash").unwrap().like, "lodash");
    }

    #[test]
    fn exemptions() {
        let rule = TyposquatRule::new(Action::Block, list(), &["reactt".into(), "/^lod/".into()]).unwrap();
        assert_eq!(rule.suspect("reactt"), None);
        assert_eq!(rule.suspect("lodahs"), None);
        assert_eq!(rule.suspect("raect").unwrap().like, "react");
        assert!(TyposquatRule::new(Action::Warn, list(), &["/(/".into()]).is_err());
    }

    /// Lookups on the request path against the shipped list, by kind of name: popular ones
    /// (most requests), others, suspects. `cargo test --lib lookups_are_fast -- --nocapture`
    /// prints the time per lookup (README "Typosquats" gives it for an optimized build).
    #[test]
    fn lookups_are_fast() {
        let list = Typosquats::built_in();
        let kinds: [(&str, [&str; 4], bool); 3] = [
            ("popular", ["semver", "@babel/core", "typescript", "lodash"], false),
            (
                "other",
                [
                    "my-company-tool",
                    "@myorg/some-long-package-name",
                    "zzz-npg",
                    "left-pad-x",
                ],
                false,
            ),
            ("suspect", ["expresss", "l0dash", "reactdom", "babelcore"], true),
        ];
        let rounds = 20_000;
        for (kind, names, suspects) in kinds {
            let start = std::time::Instant::now();
            for _ in 0..rounds {
                for name in names {
                    let found = std::hint::black_box(list.suspect(std::hint::black_box(name)));
                    assert_eq!(found.is_some(), suspects, "{name}");
                }
            }
            let per_lookup = start.elapsed().as_nanos() / (rounds * names.len()) as u128;
            println!(
                "typosquat lookup, {kind} names: {per_lookup} ns ({} names listed)",
                list.len()
            );
            // Generous for a debug build on a busy machine.
            assert!(per_lookup < 100_000, "{kind}: {per_lookup} ns per lookup");
        }
    }
}
