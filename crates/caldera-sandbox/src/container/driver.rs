//! The step driver: the shell script every exec runs, the script it is handed, and the end markers
//! split out of its output (see [`Container::exec_steps`](super::Container::exec_steps)).

use crate::spec::StepCommand;

/// Starts the marker lines of the step driver; the nonce and `<step> <status>\n` follow.
const MARKER_PREFIX: &str = "\n\u{1e}caldera-step-end ";
/// Longest `<step> <status>` after the nonce.
const MARKER_TAIL_MAX: usize = 48;

/// Quotes `s` for `sh` (single quotes; a single quote becomes `'\''`).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The step driver every exec runs (see [`Container::exec_steps`](super::Container::exec_steps)):
/// it reads a nonce line, then its script up to a line `caldera-end-<nonce>`, from stdin — so
/// neither is in its command line or environment — gives the steps `/dev/null` as stdin, and runs
/// the script.
pub(super) const DRIVER: &str = r#"IFS= read -r caldera_nonce || exit 125
caldera_script=
while IFS= read -r caldera_line; do
  [ "$caldera_line" = "caldera-end-$caldera_nonce" ] && break
  caldera_script="$caldera_script$caldera_line
"
done
exec </dev/null
eval "$caldera_script"
"#;

/// What the driver reads: the nonce, the script and its end line. The script exports the steps'
/// variables, then runs each step with stderr merged into stdout, kills what it left behind
/// (every process of the sandbox user but PID 1 and the driver), prints the end marker, and stops
/// after a failed step.
pub(super) fn driver_script(steps: &[StepCommand], nonce: &str) -> String {
    let mut script = format!("{nonce}\n");
    for (k, v) in &steps[0].env {
        script.push_str(&format!("export {k}={}\n", sh_quote(v)));
    }
    let prefix = MARKER_PREFIX
        .replace('\n', "\\n")
        .replace('\u{1e}', "\\036");
    for (i, step) in steps.iter().enumerate() {
        let argv: Vec<String> = step.argv.iter().map(|a| sh_quote(a)).collect();
        script.push_str(&format!(
            "{} 2>&1\ncaldera_status=$?\nkill -KILL -1 2>/dev/null\n\
             printf '{prefix}%s {i} %d\\n' \"$caldera_nonce\" \"$caldera_status\"\n\
             [ \"$caldera_status\" -eq 0 ] || exit 0\n",
            argv.join(" ")
        ));
    }
    script.push_str(&format!("caldera-end-{nonce}\n"));
    script
}

/// What the step driver's output stream holds.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Event {
    /// Output of the current step, exactly as written.
    Output(Vec<u8>),
    /// The driver's end marker of step `step`, with its exit status.
    End { step: usize, status: i64 },
}

/// Splits the driver's stream into step output and end markers; markers may arrive split across
/// chunks. Anything that looks like a marker but has another nonce or a malformed tail is output.
pub(super) struct MarkerScanner {
    prefix: Vec<u8>,
    finder: memchr::memmem::Finder<'static>,
    pending: Vec<u8>,
}

impl MarkerScanner {
    pub(super) fn new(nonce: &str) -> MarkerScanner {
        let prefix = format!("{MARKER_PREFIX}{nonce} ").into_bytes();
        MarkerScanner {
            finder: memchr::memmem::Finder::new(&prefix).into_owned(),
            prefix,
            pending: Vec::new(),
        }
    }

    pub(super) fn feed(&mut self, chunk: &[u8], events: &mut Vec<Event>) {
        self.pending.extend_from_slice(chunk);
        let mut from = 0;
        loop {
            let buf = &self.pending[from..];
            let Some(at) = self.finder.find(buf) else {
                // keep what could be the start of a marker
                let keep = (1..self.prefix.len().min(buf.len() + 1))
                    .rev()
                    .find(|&n| buf.ends_with(&self.prefix[..n]))
                    .unwrap_or(0);
                push_output(events, &buf[..buf.len() - keep]);
                from += buf.len() - keep;
                break;
            };
            let tail = &buf[at + self.prefix.len()..];
            match tail.iter().position(|&b| b == b'\n') {
                Some(nl) if nl <= MARKER_TAIL_MAX => {
                    push_output(events, &buf[..at]);
                    match parse_marker_tail(&tail[..nl]) {
                        Some((step, status)) => {
                            events.push(Event::End { step, status });
                            from += at + self.prefix.len() + nl + 1;
                        }
                        None => {
                            // not a marker after all: its first byte is output, go on after it
                            push_output(events, &buf[at..at + 1]);
                            from += at + 1;
                        }
                    }
                }
                None if tail.len() <= MARKER_TAIL_MAX => {
                    // the rest of the marker is still on its way
                    push_output(events, &buf[..at]);
                    from += at;
                    break;
                }
                _ => {
                    push_output(events, &buf[..=at]);
                    from += at + 1;
                }
            }
        }
        self.pending.drain(..from);
    }

    /// What is left (a partial marker that never completed is output too).
    pub(super) fn finish(self) -> Vec<u8> {
        self.pending
    }
}

fn push_output(events: &mut Vec<Event>, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    if let Some(Event::Output(last)) = events.last_mut() {
        last.extend_from_slice(bytes);
    } else {
        events.push(Event::Output(bytes.to_vec()));
    }
}

fn parse_marker_tail(tail: &[u8]) -> Option<(usize, i64)> {
    let text = std::str::from_utf8(tail).ok()?;
    let (step, status) = text.split_once(' ')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(step) || !digits(status) {
        return None;
    }
    Some((step.parse().ok()?, status.parse().ok()?))
}

#[cfg(test)]
mod driver_tests {
    use super::*;

    const NONCE: &str = "0123456789abcdef0123456789abcdef";

    fn marker(step: usize, status: i64) -> String {
        format!("{MARKER_PREFIX}{NONCE} {step} {status}\n")
    }

    fn scan_in_chunks(stream: &[u8], chunk: usize) -> Vec<Event> {
        let mut scanner = MarkerScanner::new(NONCE);
        let mut events = Vec::new();
        for part in stream.chunks(chunk.max(1)) {
            scanner.feed(part, &mut events);
        }
        let rest = scanner.finish();
        push_output(&mut events, &rest);
        // merge adjacent outputs, which chunking may split
        let mut merged: Vec<Event> = Vec::new();
        for e in events {
            match (merged.last_mut(), e) {
                (Some(Event::Output(a)), Event::Output(b)) => a.extend_from_slice(&b),
                (_, e) => merged.push(e),
            }
        }
        merged
    }

    #[test]
    fn markers_split_the_stream_whatever_the_chunking() {
        let stream = format!(
            "compiling\nno newline at the end{}running 1 test\n{}{}",
            marker(0, 0),
            marker(1, 101),
            "after the last\n"
        );
        let want = vec![
            Event::Output(b"compiling\nno newline at the end".to_vec()),
            Event::End { step: 0, status: 0 },
            Event::Output(b"running 1 test\n".to_vec()),
            Event::End {
                step: 1,
                status: 101,
            },
            Event::Output(b"after the last\n".to_vec()),
        ];
        for chunk in [1, 2, 3, 7, 16, 64, 4096] {
            assert_eq!(
                scan_in_chunks(stream.as_bytes(), chunk),
                want,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn look_alikes_stay_output() {
        for fake in [
            // another nonce
            format!("{MARKER_PREFIX}ffffffffffffffffffffffffffffffff 0 0\n"),
            // malformed tails
            format!("{MARKER_PREFIX}{NONCE} zero 0\n"),
            format!("{MARKER_PREFIX}{NONCE} 0 -1\n"),
            format!("{MARKER_PREFIX}{NONCE} 0 0 extra\n"),
            format!("{MARKER_PREFIX}{NONCE} {}\n", "9".repeat(60)),
            // cut off at the end of the stream
            format!("{MARKER_PREFIX}{NONCE} 0"),
        ] {
            let stream = format!("a{fake}b");
            for chunk in [1, 5, 4096] {
                assert_eq!(
                    scan_in_chunks(stream.as_bytes(), chunk),
                    vec![Event::Output(stream.as_bytes().to_vec())],
                    "{fake:?} in chunks of {chunk}"
                );
            }
        }
    }

    #[test]
    fn the_driver_quotes_every_argument() {
        let steps = [
            StepCommand::new(["cargo", "build", "--features", "a b", "it's"])
                .env("RUSTFLAGS", "--cap-lints 'warn'"),
            StepCommand::new(["cargo", "test", "$HOME", "`x`"])
                .env("RUSTFLAGS", "--cap-lints 'warn'"),
        ];
        let script = driver_script(&steps, NONCE);
        assert!(
            script.starts_with(&format!(
                "{NONCE}\nexport RUSTFLAGS='--cap-lints '\\''warn'\\'''\n"
            )),
            "{script}"
        );
        assert!(
            script.contains(r"'cargo' 'build' '--features' 'a b' 'it'\''s' 2>&1"),
            "{script}"
        );
        assert!(
            script.contains(r"'cargo' 'test' '$HOME' '`x`' 2>&1"),
            "{script}"
        );
        assert_eq!(script.matches("kill -KILL -1").count(), 2);
        assert!(
            script.contains(r"printf '\n\036caldera-step-end %s 1 %d\n'"),
            "{script}"
        );
        assert!(
            script.ends_with(&format!("\ncaldera-end-{NONCE}\n")),
            "{script}"
        );
        // the end line appears once, at the end: no argument can end the script early
        assert_eq!(script.matches(&format!("caldera-end-{NONCE}")).count(), 1);
    }
}
