//! Just enough Markdown (CommonMark as GitHub renders it) for the checks:
//! fenced code blocks, the links of the prose around them, and the anchors
//! GitHub gives headings.

use std::collections::{HashMap, HashSet};

/// A fenced code block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fence {
    /// The first word of the info string, lower-case (`sh`, `toml`, ...).
    pub(crate) lang: String,
    /// Its content lines with their 1-based line numbers in the file,
    /// the fence's own indentation removed.
    pub(crate) lines: Vec<(usize, String)>,
}

/// A Markdown file split into prose lines (code blocks removed, HTML
/// comments blanked) and fenced code blocks.
#[derive(Debug, Default)]
pub(crate) struct Document {
    /// 1-based line number and text of every line outside a fence.
    pub(crate) prose: Vec<(usize, String)>,
    /// The fenced code blocks, in order.
    pub(crate) fences: Vec<Fence>,
}

/// An opening fence: its character, its length, its indentation and the
/// info string.
fn fence_open(line: &str) -> Option<(char, usize, usize, &str)> {
    let rest = line.trim_start_matches(' ');
    let indent = line.len() - rest.len();
    let ch = rest.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let len = rest.chars().take_while(|c| *c == ch).count();
    if len < 3 {
        return None;
    }
    let info = rest[len..].trim();
    // A backtick fence's info string has no backtick (else it is inline code).
    if ch == '`' && info.contains('`') {
        return None;
    }
    Some((ch, len, indent, info))
}

fn is_fence_close(line: &str, ch: char, len: usize) -> bool {
    let rest = line.trim_start_matches(' ');
    let run = rest.chars().take_while(|c| *c == ch).count();
    run >= len && rest[run..].trim().is_empty()
}

/// Splits `text` into prose and fenced code blocks. Fences may be indented
/// (inside list items); an unclosed fence runs to the end of the file.
pub(crate) fn parse(text: &str) -> Document {
    let mut doc = Document::default();
    let mut fence: Option<(char, usize, usize, Fence)> = None;
    let mut in_comment = false;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if let Some((ch, len, indent, block)) = &mut fence {
            if is_fence_close(line, *ch, *len) {
                if let Some((_, _, _, block)) = fence.take() {
                    doc.fences.push(block);
                }
            } else {
                let strip = line.len() - line.trim_start_matches(' ').len();
                block
                    .lines
                    .push((number, line[strip.min(*indent)..].to_owned()));
            }
            continue;
        }
        if !in_comment && let Some((ch, len, indent, info)) = fence_open(line) {
            let lang = info
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_lowercase();
            fence = Some((
                ch,
                len,
                indent,
                Fence {
                    lang,
                    lines: vec![],
                },
            ));
            continue;
        }
        let (blanked, still_in_comment) = blank_comments(line, in_comment);
        in_comment = still_in_comment;
        doc.prose.push((number, blanked));
    }
    if let Some((_, _, _, block)) = fence {
        doc.fences.push(block);
    }
    doc
}

/// `line` with HTML comments (`<!-- ... -->`, possibly spanning lines)
/// replaced by spaces, and whether a comment is still open at its end.
fn blank_comments(line: &str, mut in_comment: bool) -> (String, bool) {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    loop {
        if in_comment {
            match rest.find("-->") {
                Some(end) => {
                    out.extend(std::iter::repeat_n(' ', end + 3));
                    rest = &rest[end + 3..];
                    in_comment = false;
                }
                None => {
                    out.extend(std::iter::repeat_n(' ', rest.len()));
                    return (out, true);
                }
            }
        } else {
            match rest.find("<!--") {
                Some(start) => {
                    out.push_str(&rest[..start]);
                    out.extend(std::iter::repeat_n(' ', 4));
                    rest = &rest[start + 4..];
                    in_comment = true;
                }
                None => {
                    out.push_str(rest);
                    return (out, false);
                }
            }
        }
    }
}

/// A piece of a line: inline code or the text around it.
enum Span<'a> {
    Text(&'a str),
    /// The code, and the width of the whole span with its backticks.
    Code(&'a str, usize),
}

/// Splits a line at its code spans (a run of N backticks up to the next
/// run of exactly N). An unmatched run is literal text. Code spans are
/// taken line by line: one that spans lines is not recognised.
fn spans(line: &str) -> Vec<Span<'_>> {
    let bytes = line.as_bytes();
    let mut out = vec![];
    let mut text_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if bytes[i] != b'`' {
            i += 1;
            continue;
        }
        let run = bytes[i..].iter().take_while(|b| **b == b'`').count();
        let mut j = i + run;
        let mut close = None;
        while j < bytes.len() {
            if bytes[j] == b'`' {
                let other = bytes[j..].iter().take_while(|b| **b == b'`').count();
                if other == run {
                    close = Some(j);
                    break;
                }
                j += other;
            } else {
                j += 1;
            }
        }
        match close {
            Some(j) => {
                out.push(Span::Text(&line[text_start..i]));
                out.push(Span::Code(&line[i + run..j], j + run - i));
                i = j + run;
                text_start = i;
            }
            None => i += run,
        }
    }
    out.push(Span::Text(&line[text_start.min(line.len())..]));
    out
}

/// The line with its code spans blanked (same length, so columns hold).
fn without_code(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for span in spans(line) {
        match span {
            Span::Text(text) => out.push_str(text),
            Span::Code(_, width) => out.extend(std::iter::repeat_n(' ', width)),
        }
    }
    out
}

/// Where a link points, as written (before percent-decoding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    /// 1-based line number.
    pub(crate) line: usize,
    /// The destination as written: `path`, `path#anchor`, `#anchor`, a URL.
    pub(crate) dest: String,
}

/// What a Markdown file links to, and the problems found on the way.
#[derive(Debug, Default)]
pub(crate) struct Links {
    /// Destinations of inline links and images, reference definitions and
    /// `<img src>` / `<a href>`.
    pub(crate) links: Vec<Link>,
    /// `[text][ref]` whose `[ref]: ...` is missing: (line, label).
    pub(crate) undefined_refs: Vec<(usize, String)>,
}

/// A reference label as CommonMark matches it: case-insensitive, inner
/// whitespace collapsed.
fn label_key(label: &str) -> String {
    label
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The destination of an inline link starting right after `](`.
fn inline_dest(rest: &str) -> Option<String> {
    let rest = rest.trim_start();
    if let Some(angle) = rest.strip_prefix('<') {
        return angle.find('>').map(|end| angle[..end].to_owned());
    }
    let mut depth = 0usize;
    let mut end = rest.len();
    let mut chars = rest.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '(' => depth += 1,
            ')' if depth == 0 => {
                end = at;
                break;
            }
            ')' => depth -= 1,
            c if c.is_whitespace() => {
                end = at;
                break;
            }
            _ => {}
        }
    }
    Some(rest[..end].to_owned())
}

/// A reference definition `[label]: dest` (up to 3 spaces of indentation).
fn definition(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix("   ").or_else(|| line.strip_prefix("  "));
    let rest = rest.or_else(|| line.strip_prefix(' ')).unwrap_or(line);
    let rest = rest.strip_prefix('[')?;
    let close = rest.find("]:")?;
    let label = &rest[..close];
    if label.is_empty() || label.starts_with('^') || label.contains('[') {
        return None;
    }
    let dest = rest[close + 2..].split_whitespace().next()?;
    let dest = dest
        .strip_prefix('<')
        .and_then(|d| d.strip_suffix('>'))
        .unwrap_or(dest);
    Some((label_key(label), dest.to_owned()))
}

/// The values of `src=` and `href=` attributes inside HTML tags.
fn html_dests(line: &str) -> Vec<String> {
    let mut out = vec![];
    let lower = line.to_ascii_lowercase();
    for attr in ["src=", "href="] {
        let mut from = 0;
        while let Some(at) = lower[from..].find(attr).map(|a| a + from) {
            from = at + attr.len();
            let before_ok = lower[..at].ends_with(char::is_whitespace);
            let in_tag = lower[..at].rfind('<') > lower[..at].rfind('>');
            if !(before_ok && in_tag) {
                continue;
            }
            let value = &line[from..];
            let dest = match value.chars().next() {
                Some(q @ ('"' | '\'')) => value[1..].split(q).next().unwrap_or_default(),
                _ => value
                    .split(|c: char| c.is_whitespace() || c == '>')
                    .next()
                    .unwrap_or_default(),
            };
            out.push(dest.to_owned());
        }
    }
    out
}

/// Every link of a Markdown text outside code blocks and inline code.
pub(crate) fn links(doc: &Document) -> Links {
    let mut found = Links::default();
    let mut definitions = HashSet::new();
    let mut references = vec![];
    for (number, raw) in &doc.prose {
        let line = without_code(raw);
        if let Some((label, dest)) = definition(&line) {
            definitions.insert(label);
            found.links.push(Link {
                line: *number,
                dest,
            });
            continue;
        }
        // Inline links and images: every `](`, so nested ones
        // (`[![alt](img)](target)`) count twice, as they should.
        let mut from = 0;
        while let Some(at) = line[from..].find("](").map(|a| a + from) {
            from = at + 2;
            if let Some(dest) = inline_dest(&line[from..]) {
                found.links.push(Link {
                    line: *number,
                    dest,
                });
            }
        }
        // Full and collapsed references: `[text][ref]`, `[text][]`.
        let mut from = 0;
        while let Some(at) = line[from..].find("][").map(|a| a + from) {
            from = at + 2;
            let Some(close) = line[from..].find(']') else {
                continue;
            };
            let label = if close == 0 {
                // Collapsed: the label is the text, from its `[`.
                let mut depth = 0usize;
                let start = line[..at].char_indices().rev().find(|(_, c)| match c {
                    ']' => {
                        depth += 1;
                        false
                    }
                    '[' if depth == 0 => true,
                    '[' => {
                        depth -= 1;
                        false
                    }
                    _ => false,
                });
                match start {
                    Some((start, _)) => &line[start + 1..at],
                    None => continue,
                }
            } else {
                &line[from..from + close]
            };
            references.push((*number, label.to_owned()));
        }
        for dest in html_dests(&line) {
            found.links.push(Link {
                line: *number,
                dest,
            });
        }
    }
    found.undefined_refs = references
        .into_iter()
        .filter(|(_, label)| !definitions.contains(&label_key(label)))
        .collect();
    found
}

/// The text a heading renders to: code spans as their content, links and
/// images as their text, HTML tags and emphasis markers dropped.
fn heading_text(raw: &str) -> String {
    let mut out = String::new();
    for span in spans(raw) {
        match span {
            Span::Code(code, _) => {
                let trimmed = code
                    .strip_prefix(' ')
                    .and_then(|c| c.strip_suffix(' '))
                    .filter(|c| !c.trim().is_empty())
                    .unwrap_or(code);
                out.push_str(trimmed);
            }
            Span::Text(text) => out.push_str(&render_inline(text)),
        }
    }
    out.trim().to_owned()
}

/// Inline markup outside code: `[text](url)` → text, `<tag>` → nothing,
/// `*`/`_` emphasis markers → nothing, `\x` → `x`.
fn render_inline(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if i + 1 < chars.len() && chars[i + 1].is_ascii_punctuation() => {
                out.push(chars[i + 1]);
                i += 2;
            }
            '!' if chars.get(i + 1) == Some(&'[') => i += 1,
            '[' | ']' => i += 1,
            '(' if i > 0 && chars[i - 1] == ']' => {
                // A link's destination: skip to its closing parenthesis.
                let mut depth = 0usize;
                while i < chars.len() {
                    match chars[i] {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                i += 1;
            }
            '<' => match chars[i..].iter().position(|c| *c == '>') {
                Some(end) => i += end + 1,
                None => {
                    out.push(c);
                    i += 1;
                }
            },
            '*' | '~' => i += 1,
            '_' => {
                // Emphasis when at the edge of a word; inside one
                // (`secret_version`) it is a character.
                let before = i.checked_sub(1).map(|b| chars[b]);
                let after = chars.get(i + 1).copied();
                let inner = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
                if inner(before) && inner(after) {
                    out.push('_');
                }
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// GitHub's anchor for a heading's text: lower-case; every character but
/// letters, digits, `-`, `_` and spaces removed; each space a `-`.
pub(crate) fn slug(heading: &str) -> String {
    heading_text(heading)
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// An ATX heading's text (`## Text ##`), if the line is one.
fn atx_heading(line: &str) -> Option<&str> {
    let rest = line.trim_start_matches(' ');
    if line.len() - rest.len() > 3 {
        return None;
    }
    let level = rest.chars().take_while(|c| *c == '#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let text = &rest[level..];
    if !(text.is_empty() || text.starts_with([' ', '\t'])) {
        return None;
    }
    let text = text.trim();
    // A closing sequence of `#`s, preceded by a space, is not text.
    let closed = text.trim_end_matches('#');
    let text = if closed.is_empty() || closed.ends_with([' ', '\t']) {
        closed.trim_end()
    } else {
        text
    };
    Some(text)
}

/// A setext underline (`===` or `---`, up to 3 spaces of indentation).
fn is_setext_underline(line: &str) -> bool {
    let rest = line.trim_start_matches(' ');
    if line.len() - rest.len() > 3 {
        return false;
    }
    let rest = rest.trim_end();
    !rest.is_empty() && (rest.chars().all(|c| c == '=') || rest.chars().all(|c| c == '-'))
}

/// Every anchor GitHub gives the file: one per heading (ATX or setext), a
/// `-1`, `-2`... suffix on repeated slugs as github-slugger does; and the
/// `id`/`name` of HTML anchors in the prose.
pub(crate) fn anchors(doc: &Document) -> HashSet<String> {
    let mut headings = vec![];
    let mut previous: Option<(usize, &str, bool)> = None;
    for (number, line) in &doc.prose {
        let atx = atx_heading(line);
        if let Some(text) = atx {
            headings.push(text.to_owned());
        } else if let Some((prev_number, prev, prev_heading)) = previous
            && prev_number + 1 == *number
            && !prev_heading
            && !prev.trim().is_empty()
            && !prev.trim_start().starts_with(['|', '>', '-', '*', '+'])
            && is_setext_underline(line)
        {
            headings.push(prev.trim().to_owned());
        }
        previous = Some((*number, line, atx.is_some()));
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = HashSet::new();
    for heading in headings {
        let original = slug(&heading);
        let mut result = original.clone();
        while seen.contains_key(&result) {
            let count = seen.entry(original.clone()).or_insert(0);
            *count += 1;
            result = format!("{original}-{count}");
        }
        seen.insert(result.clone(), 0);
        out.insert(result);
    }
    for (_, line) in &doc.prose {
        let lower = line.to_ascii_lowercase();
        for attr in [" id=", " name="] {
            let mut from = 0;
            while let Some(at) = lower[from..].find(attr).map(|a| a + from) {
                from = at + attr.len();
                if lower[..at].rfind('<') <= lower[..at].rfind('>') {
                    continue;
                }
                let value = &line[from..];
                let id = match value.chars().next() {
                    Some(q @ ('"' | '\'')) => value[1..].split(q).next().unwrap_or_default(),
                    _ => value
                        .split(|c: char| c.is_whitespace() || c == '>')
                        .next()
                        .unwrap_or_default(),
                };
                out.insert(id.to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link_dests(text: &str) -> Vec<(usize, String)> {
        links(&parse(text))
            .links
            .into_iter()
            .map(|l| (l.line, l.dest))
            .collect()
    }

    #[test]
    fn fences_are_split_from_prose_even_indented() {
        let doc =
            parse("a\n```sh\nx\n```\n- item\n\n  ```bash title\n  y\n  ```\n~~~~\n```\n~~~~\nb\n");
        assert_eq!(doc.fences.len(), 3);
        assert_eq!(doc.fences[0].lang, "sh");
        assert_eq!(doc.fences[0].lines, vec![(3, "x".to_owned())]);
        assert_eq!(doc.fences[1].lang, "bash");
        assert_eq!(doc.fences[1].lines, vec![(8, "y".to_owned())]);
        // A shorter fence of the other kind does not close a fence.
        assert_eq!(doc.fences[2].lines, vec![(11, "```".to_owned())]);
        let prose: Vec<usize> = doc.prose.iter().map(|(n, _)| *n).collect();
        assert_eq!(prose, vec![1, 5, 6, 13]);
    }

    #[test]
    fn inline_links_images_html_and_definitions() {
        let text = "See [the docs](docs/a.md#set-up) and [here](#top).\n\
                    ![alt](img/x.svg \"title\") [![b](badge.svg)](<with space.md>)\n\
                    <img src=\"docs/p.svg\" width=\"10\"> <a href='b.md'>b</a>\n\
                    [ref]: docs/ref.md#r\n\
                    Go [there][ref], [Ref][] and [missing][nope].\n\
                    [f(x)](a_(b).md) [ok](https://example.com/x)\n";
        assert_eq!(
            link_dests(text),
            vec![
                (1, "docs/a.md#set-up".to_owned()),
                (1, "#top".to_owned()),
                (2, "img/x.svg".to_owned()),
                (2, "badge.svg".to_owned()),
                (2, "with space.md".to_owned()),
                (3, "docs/p.svg".to_owned()),
                (3, "b.md".to_owned()),
                (4, "docs/ref.md#r".to_owned()),
                (6, "a_(b).md".to_owned()),
                (6, "https://example.com/x".to_owned()),
            ]
        );
        assert_eq!(
            links(&parse(text)).undefined_refs,
            vec![(5, "nope".to_owned())]
        );
    }

    #[test]
    fn links_in_code_and_comments_are_not_links() {
        let text = "`[a](in-code.md)` and ``x [b](c.md) ` y``\n\
                    ```md\n[c](in-fence.md)\n```\n\
                    <!-- [d](commented.md)\n[e](still.md) --> [f](real.md)\n";
        assert_eq!(link_dests(text), vec![(6, "real.md".to_owned())]);
    }

    #[test]
    fn slugs_follow_github() {
        assert_eq!(slug("Quick start"), "quick-start");
        assert_eq!(
            slug("Reconnect storms: `enos-fleet`"),
            "reconnect-storms-enos-fleet"
        );
        assert_eq!(slug("Certificates: who is who"), "certificates-who-is-who");
        assert_eq!(slug("A & B"), "a--b");
        assert_eq!(slug("What's `secret_version`?"), "whats-secret_version");
        assert_eq!(
            slug("*Emphasis* and _this_ snake_case"),
            "emphasis-and-this-snake_case"
        );
        assert_eq!(slug("[Linked](other.md) heading"), "linked-heading");
        assert_eq!(slug("start -> CONNACK (p99)"), "start---connack-p99");
        assert_eq!(slug("Ünïcode Über"), "ünïcode-über");
    }

    #[test]
    fn anchors_number_duplicates_and_skip_code() {
        let text = "# Title #\n## Set up\ntext\n## Set up\n### Set up\n\
                    ```sh\n# not a heading\n```\n\
                    Setext\n======\nOther\n---\n\n---\n\
                    #nospace\n<a id=\"custom\"></a>\n## Set up 1\n";
        let mut got: Vec<String> = anchors(&parse(text)).into_iter().collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                "custom",
                "other",
                "set-up",
                "set-up-1",
                "set-up-1-1",
                "set-up-2",
                "setext",
                "title"
            ]
        );
    }
}
