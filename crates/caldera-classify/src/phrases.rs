//! The phrases that are evidence, matched in one pass per line, and small line parsers.

use super::*;

pub(crate) const ICE_PHRASES: &[&str] = &[
    "error: internal compiler error",
    "the compiler unexpectedly panicked",
    "query stack during panic",
    "rustc interrupted by SIGSEGV",
    "thread 'rustc' has overflowed its stack",
];

pub(crate) const OOM_PHRASES: &[&str] = &[
    "LLVM ERROR: out of memory",
    "virtual memory exhausted",
    "out of memory allocating",
    "Cannot allocate memory",
];

/// A process was killed by SIGKILL. Evidence only: the cgroup's OOM counter, not a SIGKILL, says
/// whether the OOM killer did it (an operator, a sweep or a dying engine kill the same way).
pub(crate) const SIGKILL_PHRASES: &[&str] = &[
    "(signal: 9, SIGKILL",
    "Killed signal terminated program",
    "terminated with signal 9 [Killed]",
];

/// Permission errors; with a farm path nearby, the farm's fault.
pub(crate) const PERMISSION_PHRASES: &[&str] = &["Permission denied", "(os error 13)"];

/// Where the sandbox mounts what the farm provides (caldera-sandbox's `paths`): the shared cargo
/// home with the registry sources, and the toolchains (`/caldera/toolchain`, `/caldera/toolchains`).
pub(crate) const FARM_PATHS: &[&str] = &["/caldera/cargo-home", "/caldera/toolchain"];

/// How many lines after a farm path a permission error is still taken to be about it.
pub(crate) const FARM_PATH_REACH: u32 = 4;

pub(crate) const NO_SPACE_PHRASES: &[&str] = &[
    "No space left on device",
    "Disk quota exceeded",
    "(os error 28)",
];

/// The phrases that say the disk (or a quota) is full, as the OS, cargo and rustc print them. The
/// worker's preparation reads them too, so a full disk is known by the same words in a build's
/// output and in the host's own commands.
pub const fn no_space_phrases() -> &'static [&'static str] {
    NO_SPACE_PHRASES
}

pub(crate) const NETWORK_PHRASES: &[&str] = &[
    "Could not resolve host",
    "failed to lookup address information",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "No route to host",
    "failed to download",
    "attempting to make an HTTP request, but --offline was specified",
    "attempting to make an HTTP request, but --frozen was specified",
    "can't update in the offline mode",
];

pub(crate) const NETWORK_ACCESS_QUALIFIERS: &[&str] = &[
    "requir",
    "denied",
    "disabled",
    "not allowed",
    "unavailable",
    "no network access",
];

pub(crate) const LINK_PHRASES: &[&str] = &[
    "linking with `",
    "undefined reference to `",
    "collect2: error: ld returned",
    "rust-lld: error:",
    "ld.lld: error:",
    "ld: cannot find -l",
    "cannot find -l",
    "error: linker `",
    "could not find native static library",
];

pub(crate) const CONTAMINATION_PHRASES: &[&str] = &[
    "multiple candidates for `rmeta` dependency",
    "multiple candidates for `rlib` dependency",
    "multiple candidates for `dylib` dependency",
    "error[E0464]",
    "multiple matching crates for `",
];

pub(crate) const DIAGNOSTICS_CHANGED_PHRASES: &[&str] = &[
    "TRYBUILD=overwrite",
    "actual output differed from expected",
    "differed from the expected",
    "normalized stderr",
    "--bless",
];

/// Other fixed strings whose presence gates a closer look at a line.
pub(crate) const TRIGGERS: &[(&str, u32)] = &[
    ("memory allocation of ", Hits::ALLOC),
    (" bytes failed", Hits::BYTES_FAILED),
    ("Connection refused", Hits::REFUSED),
    ("etwork access", Hits::NETWORK_ACCESS),
    ("process didn't exit successfully: `", Hits::PROCESS),
    ("error: test failed", Hits::BINARY_FAILED),
    ("error: doctest failed", Hits::BINARY_FAILED),
];

/// Every phrase searched in a line, with its bit in [`Hits`].
pub(crate) fn all_phrases() -> impl Iterator<Item = (&'static str, u32)> {
    let groups: [(&'static [&'static str], u32); 10] = [
        (ICE_PHRASES, Hits::ICE),
        (OOM_PHRASES, Hits::OOM),
        (SIGKILL_PHRASES, Hits::SIGKILL),
        (PERMISSION_PHRASES, Hits::PERMISSION),
        (FARM_PATHS, Hits::FARM_PATH),
        (NO_SPACE_PHRASES, Hits::NO_SPACE),
        (NETWORK_PHRASES, Hits::NETWORK),
        (LINK_PHRASES, Hits::LINK),
        (CONTAMINATION_PHRASES, Hits::CONTAMINATION),
        (DIAGNOSTICS_CHANGED_PHRASES, Hits::DIAGNOSTICS),
    ];
    groups
        .into_iter()
        .flat_map(|(phrases, bit)| phrases.iter().map(move |p| (*p, bit)))
        .chain(TRIGGERS.iter().copied())
}

/// Which phrases a line contains, as bits. All phrases are found in one pass over the line
/// (a bigram filter, then the phrases starting with that byte), instead of one search per phrase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Hits(pub(crate) u32);

impl Hits {
    pub(crate) const ICE: u32 = 1;
    const OOM: u32 = 1 << 1;
    const NO_SPACE: u32 = 1 << 2;
    const NETWORK: u32 = 1 << 3;
    pub(crate) const LINK: u32 = 1 << 4;
    pub(crate) const CONTAMINATION: u32 = 1 << 5;
    pub(crate) const DIAGNOSTICS: u32 = 1 << 6;
    const ALLOC: u32 = 1 << 7;
    const BYTES_FAILED: u32 = 1 << 8;
    const REFUSED: u32 = 1 << 9;
    const NETWORK_ACCESS: u32 = 1 << 10;
    pub(crate) const SIGKILL: u32 = 1 << 11;
    pub(crate) const PROCESS: u32 = 1 << 12;
    pub(crate) const BINARY_FAILED: u32 = 1 << 13;
    pub(crate) const PERMISSION: u32 = 1 << 14;
    pub(crate) const FARM_PATH: u32 = 1 << 15;

    pub(crate) fn of(line: &str) -> Hits {
        let m = matcher();
        let b = line.as_bytes();
        let mut bits = 0;
        for i in 0..b.len().saturating_sub(1) {
            let bigram = usize::from(b[i]) << 8 | usize::from(b[i + 1]);
            if m.bigrams[bigram >> 6] & (1 << (bigram & 63)) == 0 {
                continue;
            }
            for (phrase, bit) in &m.by_first[usize::from(b[i])] {
                if b[i..].starts_with(phrase) {
                    bits |= bit;
                }
            }
        }
        Hits(bits)
    }

    pub(crate) const fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }

    pub(crate) fn oom(self) -> bool {
        self.has(Hits::OOM) || (self.has(Hits::ALLOC) && self.has(Hits::BYTES_FAILED))
    }

    pub(crate) fn spurious(self, line: &str) -> Option<Spurious> {
        if self.has(Hits::NO_SPACE) {
            return Some(Spurious::NoSpace);
        }
        let network = self.has(Hits::NETWORK)
            || (self.has(Hits::REFUSED) && mentions_remote_url(line))
            || (self.has(Hits::NETWORK_ACCESS) && {
                let lower = line.to_ascii_lowercase();
                lower.contains("network access")
                    && NETWORK_ACCESS_QUALIFIERS.iter().any(|q| lower.contains(q))
            });
        network.then_some(Spurious::Network)
    }
}

pub(crate) struct Matcher {
    /// Phrases by first byte.
    pub(crate) by_first: Vec<Vec<(&'static [u8], u32)>>,
    /// Bit set of the phrases' first two bytes.
    pub(crate) bigrams: Vec<u64>,
}

pub(crate) fn matcher() -> &'static Matcher {
    static MATCHER: std::sync::OnceLock<Matcher> = std::sync::OnceLock::new();
    MATCHER.get_or_init(|| {
        let mut m = Matcher {
            by_first: vec![Vec::new(); 256],
            bigrams: vec![0; 65536 / 64],
        };
        for (phrase, bit) in all_phrases() {
            let b = phrase.as_bytes();
            debug_assert!(b.len() >= 2, "phrase {phrase:?} is too short");
            let bigram = usize::from(b[0]) << 8 | usize::from(b[1]);
            m.bigrams[bigram >> 6] |= 1 << (bigram & 63);
            m.by_first[usize::from(b[0])].push((b, bit));
        }
        m
    })
}

/// Whether the line contains a URL whose host is not the local machine.
pub(crate) fn mentions_remote_url(line: &str) -> bool {
    line.match_indices("://").any(|(i, _)| {
        let rest = &line[i + 3..];
        let end = rest
            .find(|c: char| matches!(c, '/' | '"' | '\'' | '`' | ')' | ',') || c.is_whitespace())
            .unwrap_or(rest.len());
        let authority = &rest[..end];
        let hostport = authority.rsplit('@').next().unwrap_or(authority);
        let host = if let Some(v6) = hostport.strip_prefix('[') {
            v6.split(']').next().unwrap_or(v6)
        } else {
            hostport.split(':').next().unwrap_or(hostport)
        };
        !host.is_empty()
            && host != "localhost"
            && !host.ends_with(".localhost")
            && !host.starts_with("127.")
            && host != "::1"
            && host != "0.0.0.0"
    })
}

/// `process didn't exit successfully: `CMD` (STATUS)` → (CMD, STATUS).
pub(crate) fn process_status(line: &str) -> Option<(&str, &str)> {
    const MARK: &str = "process didn't exit successfully: `";
    let start = line.find(MARK)? + MARK.len();
    let rest = &line[start..];
    let split = rest.rfind("` (")?;
    let status = rest[split + 3..].strip_suffix(')')?;
    Some((&rest[..split], status))
}

/// The program of a command line is a compiler (rustc, rustdoc, clippy-driver, miri as rustc).
pub(crate) fn is_compiler_command(cmd: &str) -> bool {
    let program = cmd.split_whitespace().next().unwrap_or("");
    let file = program.rsplit('/').next().unwrap_or(program);
    matches!(file, "rustc" | "rustdoc" | "clippy-driver")
}

/// Removes the sandbox's `[   1.234] ` prefix and a trailing `\r`.
pub(crate) fn strip_timestamp(line: &str) -> &str {
    caldera_core::logtext::unstamped(line.strip_suffix('\r').unwrap_or(line))
}

pub(crate) fn clip(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The text between the first pair of backticks.
pub(crate) fn backticked(line: &str) -> Option<&str> {
    let start = line.find('`')? + 1;
    let len = line[start..].find('`')?;
    Some(&line[start..start + len])
}
