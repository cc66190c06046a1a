//! What the checks need of a Markdown file, read by pulldown-cmark (the
//! CommonMark parser rustdoc and mdBook use, with GitHub's extensions):
//! its fenced code blocks, where its links point, and the anchors GitHub
//! gives its headings.

use std::collections::{HashMap, HashSet};

use pulldown_cmark::{BrokenLink, CodeBlockKind, Event, LinkType, Options, Parser, Tag, TagEnd};

/// A fenced code block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fence {
    /// The first word of the info string, lower-case (`sh`, `toml`, ...).
    pub(crate) lang: String,
    /// Its content lines with their 1-based line numbers in the file,
    /// the fence's own indentation removed.
    pub(crate) lines: Vec<(usize, String)>,
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
#[derive(Debug, Default, Clone)]
pub(crate) struct Links {
    /// Destinations of inline links and images, reference definitions and
    /// `<img src>` / `<a href>`.
    pub(crate) links: Vec<Link>,
    /// `[text][ref]` or `[text][]` whose `[ref]: ...` is missing: (line,
    /// label).
    pub(crate) undefined_refs: Vec<(usize, String)>,
}

/// A Markdown file as the checks see it.
#[derive(Debug, Default)]
pub(crate) struct Document {
    /// The fenced code blocks, in order.
    pub(crate) fences: Vec<Fence>,
    /// Its links (never those in code).
    links: Links,
    /// The anchors GitHub makes: headings (numbered when repeated) and
    /// HTML `id` / `name` attributes.
    anchors: HashSet<String>,
}

/// GitHub's flavour, as far as it changes what is a link or a heading.
fn options() -> Options {
    Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_FOOTNOTES
}

/// 1-based line numbers of byte offsets.
struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Self {
        Lines(
            std::iter::once(0)
                .chain(text.match_indices('\n').map(|(at, _)| at + 1))
                .collect(),
        )
    }

    fn of(&self, offset: usize) -> usize {
        self.0.partition_point(|start| *start <= offset)
    }
}

/// Reads `text` once for fences, links and anchors.
pub(crate) fn parse(text: &str) -> Document {
    let lines = Lines::new(text);
    let mut undefined_refs = vec![];
    // Only `[text][ref]` and `[text][]` are references by intent; a
    // bracketed word alone (`[optional]`) is text.
    let mut broken = |link: BrokenLink<'_>| {
        if matches!(link.link_type, LinkType::Reference | LinkType::Collapsed) {
            undefined_refs.push((lines.of(link.span.start), link.reference.to_string()));
        }
        None
    };
    let parser = Parser::new_with_broken_link_callback(text, options(), Some(&mut broken));
    let mut doc = Document::default();
    // Reference definitions are checked where they are written, used or
    // not; their uses are not checked again.
    for (_, definition) in parser.reference_definitions().iter() {
        doc.links.links.push(Link {
            line: lines.of(definition.span.start),
            dest: definition.dest.to_string(),
        });
    }
    let mut fence: Option<Fence> = None;
    let mut heading: Option<String> = None;
    let mut headings = vec![];
    for (event, range) in parser.into_offset_iter() {
        match event {
            Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(info))) => {
                let lang = info.split_whitespace().next().unwrap_or_default();
                fence = Some(Fence {
                    lang: lang.to_lowercase(),
                    lines: vec![],
                });
            }
            Event::End(TagEnd::CodeBlock) => doc.fences.extend(fence.take()),
            Event::Text(content) if fence.is_some() => {
                if let Some(fence) = &mut fence {
                    let first = lines.of(range.start);
                    let content = content.strip_suffix('\n').unwrap_or(&content);
                    for (at, line) in content.split('\n').enumerate() {
                        fence.lines.push((first + at, line.to_owned()));
                    }
                }
            }
            Event::Start(Tag::Link {
                link_type,
                dest_url,
                ..
            })
            | Event::Start(Tag::Image {
                link_type,
                dest_url,
                ..
            }) if !is_reference(link_type) => doc.links.links.push(Link {
                line: lines.of(range.start),
                dest: dest_url.to_string(),
            }),
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::End(TagEnd::Heading(_)) => headings.extend(heading.take()),
            Event::Text(text) | Event::Code(text) => {
                if let Some(heading) = &mut heading {
                    heading.push_str(&text);
                }
            }
            Event::Html(html) | Event::InlineHtml(html) => {
                let html = without_comments(&html);
                for dest in attributes(&html, &["src", "href"]) {
                    doc.links.links.push(Link {
                        line: lines.of(range.start),
                        dest,
                    });
                }
                doc.anchors.extend(attributes(&html, &["id", "name"]));
            }
            _ => {}
        }
    }
    doc.links.links.sort_by_key(|link| link.line);
    doc.links.undefined_refs = undefined_refs;
    doc.anchors
        .extend(numbered(headings.iter().map(|h| slug(h))));
    doc
}

/// Whether a link's destination comes from a reference definition
/// (checked there).
fn is_reference(link_type: LinkType) -> bool {
    matches!(
        link_type,
        LinkType::Reference | LinkType::Collapsed | LinkType::Shortcut
    )
}

/// Every link of the file outside code.
pub(crate) fn links(doc: &Document) -> Links {
    doc.links.clone()
}

/// Every anchor GitHub gives the file.
pub(crate) fn anchors(doc: &Document) -> HashSet<String> {
    doc.anchors.clone()
}

/// GitHub's anchor for a heading's rendered text: lower-case; every
/// character but letters, digits, `-`, `_` and spaces removed; each space
/// a `-`.
pub(crate) fn slug(text: &str) -> String {
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Repeated slugs get `-1`, `-2`, ... as github-slugger numbers them.
fn numbered(slugs: impl Iterator<Item = String>) -> HashSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = HashSet::new();
    for original in slugs {
        let mut result = original.clone();
        while seen.contains_key(&result) {
            let count = seen.entry(original.clone()).or_insert(0);
            *count += 1;
            result = format!("{original}-{count}");
        }
        seen.insert(result.clone(), 0);
        out.insert(result);
    }
    out
}

/// `html` with its `<!-- ... -->` comments removed.
fn without_comments(html: &str) -> String {
    let mut out = String::new();
    let mut rest = html;
    while let Some(start) = rest.find("<!--") {
        out.push_str(&rest[..start]);
        match rest[start..].find("-->") {
            Some(end) => rest = &rest[start + end + 3..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

/// The values of the `names` attributes inside the tags of `html`.
fn attributes(html: &str, names: &[&str]) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut out = vec![];
    for name in names {
        let pattern = format!("{name}=");
        let mut from = 0;
        while let Some(at) = lower[from..].find(&pattern).map(|a| a + from) {
            from = at + pattern.len();
            // An attribute: inside a tag, after whitespace.
            let inside_tag = lower[..at].rfind('<') > lower[..at].rfind('>');
            let after_space = lower[..at].ends_with(char::is_whitespace);
            if !(inside_tag && after_space) {
                continue;
            }
            let value = &html[from..];
            let value = match value.chars().next() {
                Some(quote @ ('"' | '\'')) => value[1..].split(quote).next(),
                _ => value.split(|c: char| c.is_whitespace() || c == '>').next(),
            };
            out.extend(value.map(str::to_owned));
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

    /// The anchor of one heading written as `markdown`.
    fn heading_slug(markdown: &str) -> String {
        let anchors = anchors(&parse(&format!("# {markdown}\n")));
        assert_eq!(anchors.len(), 1, "{anchors:?}");
        anchors.into_iter().next().expect("one anchor")
    }

    #[test]
    fn fences_are_found_even_indented_with_their_lines() {
        let doc =
            parse("a\n```sh\nx\n```\n- item\n\n  ```bash title\n  y\n  ```\n~~~~\n```\n~~~~\nb\n");
        assert_eq!(doc.fences.len(), 3);
        assert_eq!(doc.fences[0].lang, "sh");
        assert_eq!(doc.fences[0].lines, vec![(3, "x".to_owned())]);
        assert_eq!(doc.fences[1].lang, "bash");
        assert_eq!(doc.fences[1].lines, vec![(8, "y".to_owned())]);
        // A shorter fence of the other kind does not close a fence.
        assert_eq!(doc.fences[2].lines, vec![(11, "```".to_owned())]);
        let two = parse("```sh\nfirst \\\n  second\n```\n");
        assert_eq!(
            two.fences[0].lines,
            vec![(2, "first \\".to_owned()), (3, "  second".to_owned())]
        );
    }

    #[test]
    fn inline_links_images_html_and_definitions() {
        let text = "See [the docs](docs/a.md#set-up) and [here](#top).\n\
                    ![alt](img/x.svg \"title\") [![b](badge.svg)](<with space.md>)\n\
                    <img src=\"docs/p.svg\" width=\"10\"> <a href='b.md'>b</a>\n\
                    \n\
                    [ref]: docs/ref.md#r\n\
                    \n\
                    Go [there][ref], [Ref][] and [missing][nope], not [optional].\n\
                    [f(x)](a_(b).md) [ok](https://example.com/x)\n";
        assert_eq!(
            link_dests(text),
            vec![
                (1, "docs/a.md#set-up".to_owned()),
                (1, "#top".to_owned()),
                (2, "img/x.svg".to_owned()),
                (2, "with space.md".to_owned()),
                (2, "badge.svg".to_owned()),
                (3, "docs/p.svg".to_owned()),
                (3, "b.md".to_owned()),
                (5, "docs/ref.md#r".to_owned()),
                (8, "a_(b).md".to_owned()),
                (8, "https://example.com/x".to_owned()),
            ]
        );
        assert_eq!(
            links(&parse(text)).undefined_refs,
            vec![(7, "nope".to_owned())]
        );
    }

    #[test]
    fn links_in_code_and_comments_are_not_links() {
        let text = "`[a](in-code.md)` and ``x [b](c.md) ` y``\n\
                    ```md\n[c](in-fence.md)\n```\n\
                    <!-- [d](commented.md)\n[e](still.md) -->\n\n\
                    text <!-- [g](inline.md) --> [f](real.md)\n";
        assert_eq!(link_dests(text), vec![(8, "real.md".to_owned())]);
    }

    #[test]
    fn slugs_follow_github() {
        assert_eq!(heading_slug("Quick start"), "quick-start");
        assert_eq!(
            heading_slug("Reconnect storms: `enos-fleet`"),
            "reconnect-storms-enos-fleet"
        );
        assert_eq!(
            heading_slug("Certificates: who is who"),
            "certificates-who-is-who"
        );
        assert_eq!(heading_slug("A & B"), "a--b");
        assert_eq!(
            heading_slug("What's `secret_version`?"),
            "whats-secret_version"
        );
        assert_eq!(
            heading_slug("*Emphasis* and _this_ snake_case"),
            "emphasis-and-this-snake_case"
        );
        assert_eq!(heading_slug("[Linked](other.md) heading"), "linked-heading");
        assert_eq!(
            heading_slug("start -> CONNACK (p99)"),
            "start---connack-p99"
        );
        assert_eq!(heading_slug("Ünïcode Über"), "ünïcode-über");
    }

    #[test]
    fn anchors_number_duplicates_and_skip_code() {
        let text = "# Title #\n## Set up\ntext\n## Set up\n### Set up\n\
                    ```sh\n# not a heading\n```\n\
                    Setext\n======\nOther\n---\n\n---\n\
                    #nospace\n\n<a id=\"custom\"></a>\n\n## Set up 1\n";
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
