//! What a tarball runs at install (`npm::tarball`), from hostile bytes: no panic, bounded
//! work, and one answer whatever the chunking the network gives (whole, cut at two points
//! the input chooses, byte by byte): a chunk boundary must never hide a package.json.
#![no_main]

use libfuzzer_sys::fuzz_target;
use npg::npm::tarball::{Probe, ScriptProbe};

fn probe<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> Probe {
    let mut p = ScriptProbe::default();
    chunks.for_each(|c| p.update(c));
    p.finish()
}

fuzz_target!(|data: &[u8]| {
    let whole = probe(std::iter::once(data));
    let cut = |at: Option<&u8>| at.map_or(0, |b| *b as usize * 97) % (data.len() + 1);
    let (a, b) = (cut(data.first()), cut(data.last()));
    let (a, b) = (a.min(b), a.max(b));
    let three = [&data[..a], &data[a..b], &data[b..]];
    assert_eq!(probe(three.into_iter()), whole, "cut at {a} and {b}");
    if data.len() <= 4096 {
        assert_eq!(probe(data.chunks(1)), whole, "byte by byte");
    }
});
