//! The shell blocks of a Markdown guide and their markers: each ```` ```sh ```` block follows an
//! HTML comment saying whether the guide's test runs it (`<!-- run: ID … -->`) or not, and why
//! (`<!-- not run: REASON -->`).

/// One ```` ```sh ```` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// `Some(id)` when the test runs it; `None` when the guide says it does not.
    pub id: Option<String>,
    /// Why it is not run, or the words after the id (`in the background, …`).
    pub note: String,
    /// The commands, with the block's indentation removed.
    pub code: String,
    /// The line of its opening fence (1-based).
    pub line: usize,
}

/// Every shell block of `markdown`, or the first that has no marker (naming its line).
pub fn shell_blocks(markdown: &str) -> Result<Vec<Block>, String> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let fence = lines[i];
        let indent = fence.len() - fence.trim_start().len();
        if fence.trim() != "```sh" {
            i += 1;
            continue;
        }
        let marker = i
            .checked_sub(1)
            .map(|p| lines[p].trim())
            .and_then(|l| l.strip_prefix("<!--"))
            .and_then(|l| l.strip_suffix("-->"))
            .map(str::trim)
            .ok_or_else(|| {
                format!(
                    "line {}: a ```sh block without a `<!-- run: ID -->` or `<!-- not run: REASON -->` \
                     line right before it",
                    i + 1
                )
            })?;
        let (id, note) = if let Some(reason) = marker.strip_prefix("not run:") {
            (None, reason.trim().to_owned())
        } else if let Some(rest) = marker.strip_prefix("run:") {
            let rest = rest.trim();
            let (id, note) = rest.split_once(' ').unwrap_or((rest, ""));
            if id.is_empty() {
                return Err(format!("line {}: `run:` without an id", i + 1));
            }
            (Some(id.to_owned()), note.trim().to_owned())
        } else {
            return Err(format!(
                "line {}: {marker:?} is neither `run: ID` nor `not run: REASON`",
                i + 1
            ));
        };
        if id.is_none() && note.is_empty() {
            return Err(format!("line {}: `not run:` must say why", i + 1));
        }
        let start = i + 1;
        let end = (start..lines.len())
            .find(|&j| lines[j].trim() == "```")
            .ok_or_else(|| format!("line {}: the block is not closed", i + 1))?;
        let code = lines[start..end]
            .iter()
            .map(|l| {
                l.get(indent..)
                    .filter(|_| l.len() > indent)
                    .unwrap_or(l.trim_start())
            })
            .collect::<Vec<_>>()
            .join("\n");
        blocks.push(Block {
            id,
            note,
            code,
            line: i + 1,
        });
        i = end + 1;
    }
    Ok(blocks)
}

#[test]
fn blocks_are_found_with_their_markers() {
    let md = "intro\n\n<!-- run: first -->\n```sh\necho one \\\n  two\n```\n\n\
              1. step\n\n   <!-- run: nested (in the background) -->\n   ```sh\n   echo three\n   ```\n\n\
              <!-- not run: needs root -->\n```sh\nsystemctl start x\n```\n```yaml\nnot: shell\n```\n";
    let blocks = shell_blocks(md).unwrap();
    assert_eq!(
        blocks,
        [
            Block {
                id: Some("first".into()),
                note: String::new(),
                code: "echo one \\\n  two".into(),
                line: 4
            },
            Block {
                id: Some("nested".into()),
                note: "(in the background)".into(),
                code: "echo three".into(),
                line: 12
            },
            Block {
                id: None,
                note: "needs root".into(),
                code: "systemctl start x".into(),
                line: 17
            },
        ]
    );
}

#[test]
fn a_block_without_a_proper_marker_is_an_error_naming_its_line() {
    let cases = [
        ("text\n```sh\nls\n```\n", "line 2: a ```sh block without"),
        ("<!-- maybe -->\n```sh\nls\n```\n", "\"maybe\" is neither"),
        (
            "<!-- not run: -->\n```sh\nls\n```\n",
            "`not run:` must say why",
        ),
        ("<!-- run: -->\n```sh\nls\n```\n", "`run:` without an id"),
        (
            "<!-- run: x -->\n```sh\nls\n",
            "line 2: the block is not closed",
        ),
    ];
    for (md, want) in cases {
        let err = shell_blocks(md).unwrap_err();
        assert!(err.contains(want), "{md:?}: {err}");
    }
}
