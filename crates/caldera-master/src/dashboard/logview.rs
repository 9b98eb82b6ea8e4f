//! Logs on the crate page: read from object storage up to a cap, cargo's JSON messages shown as
//! their rendered diagnostics, ANSI colours turned into HTML
//! (`ansi-to-html`, which escapes the text first), the first error only in the end log marked.

use caldera_core::logtext::for_reading;
use caldera_storage::{ObjectKey, ObjectStore};
use futures::StreamExt;
use maud::{Markup, PreEscaped, html};

/// Most bytes of a log shown on a page.
pub const LOG_VIEW_CAP: usize = 2 << 20;

/// A log as read for display.
#[derive(Debug, Default)]
pub struct LogText {
    pub text: String,
    /// The log is longer than what was read.
    pub truncated: bool,
    /// Why there is no log (none recorded, not in storage, storage error).
    pub missing: Option<String>,
}

/// Reads at most `cap` bytes of the log at `key` (decompressed), as a person reads it: cargo's JSON
/// messages become their rendered diagnostics ([`for_reading`]).
pub async fn read(store: &dyn ObjectStore, key: Option<&str>, cap: usize) -> LogText {
    let Some(key) = key else {
        return LogText {
            missing: Some("no log was recorded for this run".into()),
            ..LogText::default()
        };
    };
    let key = match ObjectKey::new(key) {
        Ok(k) => k,
        Err(e) => {
            return LogText {
                missing: Some(format!("the recorded log key is invalid: {e}")),
                ..LogText::default()
            };
        }
    };
    let mut body = match caldera_storage::get_log(store, &key).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => {
            return LogText {
                missing: Some("the log is not in object storage (yet)".into()),
                ..LogText::default()
            };
        }
        Err(e) => {
            tracing::warn!(key = %key, error = %e, "cannot read a log for the dashboard");
            return LogText {
                missing: Some(format!("cannot read the log: {e}")),
                ..LogText::default()
            };
        }
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut truncated = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => {
                let room = cap.saturating_sub(buf.len());
                if chunk.len() > room {
                    buf.extend_from_slice(&chunk[..room]);
                    truncated = true;
                    break;
                }
                buf.extend_from_slice(&chunk);
            }
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "log read failed midway");
                return LogText {
                    text: for_reading(&String::from_utf8_lossy(&buf)),
                    truncated: true,
                    missing: None,
                };
            }
        }
    }
    LogText {
        text: for_reading(&String::from_utf8_lossy(&buf)),
        truncated,
        missing: None,
    }
}

/// ANSI text as HTML (escaped first); on a conversion error, the escaped text without colours.
fn ansi(text: &str) -> Markup {
    match ansi_to_html::convert(text) {
        Ok(html) => PreEscaped(html),
        Err(_) => html! { (text) },
    }
}

/// The log as a `<pre>`, with line `highlight` (0-based, as `str::lines` counts) in a
/// `<mark id="{mark_id}">`.
pub fn render(text: &str, highlight: Option<usize>, mark_id: &str) -> Markup {
    let split = highlight.and_then(|line| {
        let mut offset = 0;
        for (i, l) in text.split_inclusive('\n').enumerate() {
            if i == line {
                return Some((offset, offset + l.len()));
            }
            offset += l.len();
        }
        None
    });
    match split {
        None => html! { pre.log tabindex="0" { (ansi(text)) } },
        Some((a, b)) => {
            let line = &text[a..b];
            let (line, eol) = match line.strip_suffix('\n') {
                Some(l) => (l.strip_suffix('\r').unwrap_or(l), "\n"),
                None => (line, ""),
            };
            html! {
                pre.log tabindex="0" {
                    (ansi(&text[..a]))
                    mark id=(mark_id) { (ansi(line)) }
                    (eol)
                    (ansi(&text[b..]))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_become_html_and_text_is_escaped() {
        let html = render(
            "\x1b[31merror\x1b[0m: <script>alert(1)</script>\n",
            None,
            "m",
        )
        .into_string();
        assert!(html.contains("<span style="), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains('\x1b'), "{html}");
    }

    #[test]
    fn the_highlighted_line_is_marked() {
        let text = "a\r\nb <x>\r\nc\n";
        let html = render(text, Some(1), "first").into_string();
        assert!(
            html.contains("<mark id=\"first\">b &lt;x&gt;</mark>\n"),
            "{html}"
        );
        assert!(
            html.starts_with("<pre class=\"log\" tabindex=\"0\">a\r\n"),
            "{html}"
        );
        assert!(html.ends_with("c\n</pre>"), "{html}");
        // past the end: nothing marked
        let html = render(text, Some(9), "first").into_string();
        assert!(!html.contains("<mark"), "{html}");
    }
}
