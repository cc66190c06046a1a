//! Just enough POSIX shell to find the command lines a shell block shows:
//! words with their quoting, operators, comments, redirections.
//!
//! Hand-written rather than `shlex`: shlex splits words but knows no
//! operators (`|`, `&&`, `;`, `>`, `2>&1`, `$(`), and finding those needs
//! the same quote-aware pass that splits the words, so a splitter is most
//! of this file either way; this one is tested below and needs no crate.

use super::markdown::Fence;

/// A token of a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token {
    /// A word, quotes and escapes removed.
    Word(String),
    /// An operator.
    Op(&'static str),
}

impl Token {
    fn is_separator(&self) -> bool {
        matches!(
            self,
            Token::Op("|" | "||" | "&&" | ";" | "&" | "(" | ")" | "$(" | "`")
        )
    }

    /// A redirection followed by its target word (`>`, `<`, `<<`...).
    fn takes_target(&self) -> bool {
        matches!(
            self,
            Token::Op(">" | ">>" | "<" | "<>" | "&>" | "&>>" | "<<" | "<<-" | "<<<")
        )
    }
}

/// `<NAME>`-style placeholders (`<PK>`, `<file.csv>`) at `at`: their
/// length, so they stay a word instead of two redirections.
fn placeholder_len(chars: &[char], at: usize) -> Option<usize> {
    let first = chars.get(at + 1)?;
    if !first.is_ascii_alphabetic() {
        return None;
    }
    let len = chars[at + 1..]
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .count();
    let close = at + 1 + len;
    (chars.get(close) == Some(&'>')
        && chars
            .get(close + 1)
            .is_none_or(|c| c.is_whitespace() || matches!(c, ']' | '.' | '|')))
    .then_some(len + 2)
}

/// Splits one logical command line into words and operators.
pub(crate) fn lex(line: &str) -> Vec<Token> {
    let chars: Vec<char> = line.chars().collect();
    let mut tokens = vec![];
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let flush =
        |tokens: &mut Vec<Token>, word: &mut String, in_word: &mut bool, quoted: &mut bool| {
            if *in_word {
                tokens.push(Token::Word(std::mem::take(word)));
            }
            *in_word = false;
            *quoted = false;
        };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            c if c.is_whitespace() => {
                flush(&mut tokens, &mut word, &mut in_word, &mut quoted);
                i += 1;
            }
            '\\' => {
                if let Some(n) = next {
                    word.push(n);
                }
                in_word = true;
                quoted = true;
                i += 2;
            }
            '\'' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|c| *c == '\'')
                    .map_or(chars.len(), |p| i + 1 + p);
                word.extend(&chars[i + 1..end]);
                in_word = true;
                quoted = true;
                i = end + 1;
            }
            '"' => {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\'
                        && let Some(n) = chars.get(i + 1)
                        && matches!(n, '$' | '`' | '"' | '\\')
                    {
                        word.push(*n);
                        i += 2;
                        continue;
                    }
                    word.push(chars[i]);
                    i += 1;
                }
                in_word = true;
                quoted = true;
                i += 1;
            }
            '#' if !in_word => break,
            '$' if next == Some('(') && chars.get(i + 2) != Some(&'(') => {
                flush(&mut tokens, &mut word, &mut in_word, &mut quoted);
                tokens.push(Token::Op("$("));
                i += 2;
            }
            '`' | '(' | ')' | ';' => {
                flush(&mut tokens, &mut word, &mut in_word, &mut quoted);
                tokens.push(Token::Op(match c {
                    '`' => "`",
                    '(' => "(",
                    ')' => ")",
                    _ => ";",
                }));
                i += 1;
            }
            '|' => {
                flush(&mut tokens, &mut word, &mut in_word, &mut quoted);
                if next == Some('|') {
                    tokens.push(Token::Op("||"));
                    i += 2;
                } else {
                    tokens.push(Token::Op("|"));
                    i += if next == Some('&') { 2 } else { 1 };
                }
            }
            '&' => {
                flush(&mut tokens, &mut word, &mut in_word, &mut quoted);
                let (op, len) = match (next, chars.get(i + 2)) {
                    (Some('&'), _) => ("&&", 2),
                    (Some('>'), Some('>')) => ("&>>", 3),
                    (Some('>'), _) => ("&>", 2),
                    _ => ("&", 1),
                };
                tokens.push(Token::Op(op));
                i += len;
            }
            '<' if placeholder_len(&chars, i).is_some() => {
                let len = placeholder_len(&chars, i).unwrap_or(1);
                word.extend(&chars[i..i + len]);
                in_word = true;
                i += len;
            }
            '<' | '>' => {
                // `2>`, `2>&1`: the digits before are a file descriptor.
                if in_word && !quoted && word.chars().all(|c| c.is_ascii_digit()) {
                    word.clear();
                    in_word = false;
                }
                flush(&mut tokens, &mut word, &mut in_word, &mut quoted);
                let rest: String = chars[i..chars.len().min(i + 3)].iter().collect();
                let dup = |at: usize| {
                    chars
                        .get(at)
                        .is_some_and(|c| c.is_ascii_digit() || *c == '-')
                };
                let (op, len) = if c == '<' {
                    if rest.starts_with("<<<") {
                        ("<<<", 3)
                    } else if rest.starts_with("<<-") {
                        ("<<-", 3)
                    } else if rest.starts_with("<<") {
                        ("<<", 2)
                    } else if rest.starts_with("<>") {
                        ("<>", 2)
                    } else if rest.starts_with("<&") && dup(i + 2) {
                        ("<&N", 3)
                    } else {
                        ("<", 1)
                    }
                } else if rest.starts_with(">>") {
                    (">>", 2)
                } else if rest.starts_with(">&") && dup(i + 2) {
                    (">&N", 3)
                } else if rest.starts_with(">|") {
                    (">", 2)
                } else {
                    (">", 1)
                };
                tokens.push(Token::Op(op));
                i += len;
            }
            _ => {
                word.push(c);
                in_word = true;
                i += 1;
            }
        }
    }
    flush(&mut tokens, &mut word, &mut in_word, &mut quoted);
    tokens
}

/// A simple command: its words (redirections removed) and, if it opens a
/// here-document, the delimiter.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Simple {
    pub(crate) words: Vec<String>,
    pub(crate) heredoc: Option<String>,
}

/// The simple commands of a logical line: split at `|`, `&&`, `;`, `&`,
/// `$(`, parentheses...; redirections and their targets dropped.
pub(crate) fn simple_commands(line: &str) -> Vec<Simple> {
    let mut out = vec![Simple::default()];
    let mut tokens = lex(line).into_iter();
    while let Some(token) = tokens.next() {
        let current = out.last_mut().expect("never empty");
        if token.is_separator() {
            out.push(Simple::default());
        } else if token.takes_target() {
            let target = tokens.next();
            if matches!(token, Token::Op("<<" | "<<-"))
                && let Some(Token::Word(delimiter)) = target
            {
                current.heredoc = Some(delimiter);
            }
        } else if let Token::Word(word) = token {
            current.words.push(word);
        }
    }
    out.retain(|s| !s.words.is_empty() || s.heredoc.is_some());
    out
}

/// A usage synopsis rather than a command (`sign --pk PK [--client-id ID]
/// --secret-file PATH|-`): it shows an optional flag in brackets. Its
/// brackets are dropped and of `a|b` alternatives the first kept, so that
/// every flag it names is checked.
fn unsynopsis(line: &str) -> Option<String> {
    if !line.contains("[-") {
        return None;
    }
    let words: Vec<String> = line
        .split_whitespace()
        .map(|word| {
            let word = word.trim_start_matches('[').trim_end_matches(']');
            match word.split_once('|') {
                Some((first, _)) if !first.is_empty() => first.to_owned(),
                _ => word.to_owned(),
            }
        })
        .filter(|w| !w.is_empty())
        .collect();
    Some(words.join(" "))
}

/// A logical line of a shell block: `\`-continued lines joined.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Logical {
    /// The line number of its first physical line.
    pub(crate) line: usize,
    /// The text, prompt removed, continuations joined with a space.
    pub(crate) text: String,
}

/// The shell languages whose blocks are scanned; `console`-like ones show
/// commands after a `$ ` prompt and output on the other lines.
pub(crate) fn shell_kind(lang: &str) -> Option<bool> {
    match lang {
        "sh" | "bash" | "shell" | "zsh" => Some(false),
        "console" | "shell-session" | "sh-session" => Some(true),
        _ => None,
    }
}

/// The logical command lines of a shell block, here-document bodies
/// skipped.
pub(crate) fn logical_lines(fence: &Fence, console: bool) -> Vec<Logical> {
    let mut out = vec![];
    let mut lines = fence.lines.iter();
    while let Some((number, first)) = lines.next() {
        let trimmed = first.trim_start();
        let text = match trimmed
            .strip_prefix("$ ")
            .or_else(|| trimmed.strip_prefix('$').filter(|r| r.is_empty()))
        {
            Some(command) => command,
            None if console => continue,
            None => first.as_str(),
        };
        let mut text = text.to_owned();
        while ends_with_continuation(&text) {
            text.pop();
            text.truncate(text.trim_end().len());
            match lines.next() {
                Some((_, more)) => {
                    text.push(' ');
                    text.push_str(more.trim_start());
                }
                None => break,
            }
        }
        let text = unsynopsis(&text).unwrap_or(text);
        // A here-document's body is data, not commands.
        let delimiters: Vec<String> = simple_commands(&text)
            .into_iter()
            .filter_map(|s| s.heredoc)
            .collect();
        for delimiter in delimiters {
            for (_, body) in lines.by_ref() {
                if body.trim() == delimiter {
                    break;
                }
            }
        }
        out.push(Logical {
            line: *number,
            text: text.trim().to_owned(),
        });
    }
    out
}

/// An odd number of trailing backslashes: the line goes on.
fn ends_with_continuation(text: &str) -> bool {
    text.chars().rev().take_while(|c| *c == '\\').count() % 2 == 1
}

/// `NAME=value`: an environment assignment.
pub(crate) fn assignment(word: &str) -> Option<(String, String)> {
    let (name, value) = word.split_once('=')?;
    let mut chars = name.chars();
    let first = chars.next()?;
    ((first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_'))
    .then(|| (name.to_owned(), value.to_owned()))
}

/// What a simple command is, once the prefixes are read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Invocation {
    /// `program args...`: the program as written (a path or a name), its
    /// arguments, and the environment assignments before it.
    Run {
        program: String,
        args: Vec<String>,
        env: Vec<(String, String)>,
    },
    /// `cargo run [-p P] [--bin B] [-- args...]`.
    Cargo {
        package: Option<String>,
        bin: Option<String>,
        args: Vec<String>,
        env: Vec<(String, String)>,
    },
    /// `export A=1 B=2`: for the rest of the file.
    Export(Vec<(String, String)>),
    /// `unset A B`.
    Unset(Vec<String>),
    /// Anything else (assignments alone, `cargo build`...).
    Other,
}

/// Reads a simple command's prefixes: `VAR=value`, `sudo [-u user]`,
/// `exec`, `env`, `nohup`, `time`, `command`, and the keywords of
/// compound commands (`if`, `then`, `do`, `!`...).
pub(crate) fn invocation(words: &[String]) -> Invocation {
    let mut env = vec![];
    let mut rest = words;
    loop {
        let Some((first, tail)) = rest.split_first() else {
            return Invocation::Other;
        };
        if let Some(pair) = assignment(first) {
            env.push(pair);
            rest = tail;
            continue;
        }
        match first.as_str() {
            "sudo" | "exec" | "env" => {
                // Options; those that take a value take the next word.
                let with_value: &[&str] = match first.as_str() {
                    "sudo" => &["-u", "-g", "-C", "-D", "-h", "-p", "-r", "-t", "-U", "-T"],
                    "exec" => &["-a"],
                    _ => &["-u", "-C", "-S"],
                };
                rest = tail;
                while let Some((option, after)) = rest.split_first() {
                    if option == "--" {
                        rest = after;
                        break;
                    }
                    if !option.starts_with('-') {
                        break;
                    }
                    rest = if with_value.contains(&option.as_str()) {
                        after.get(1..).unwrap_or_default()
                    } else {
                        after
                    };
                }
            }
            "nohup" | "time" | "command" | "!" | "if" | "then" | "else" | "elif" | "do"
            | "while" | "until" | "{" => rest = tail,
            "export" => {
                return Invocation::Export(tail.iter().filter_map(|w| assignment(w)).collect());
            }
            "unset" => return Invocation::Unset(tail.to_vec()),
            "cargo" => return cargo(tail, env),
            program => {
                return Invocation::Run {
                    program: program.to_owned(),
                    args: tail.to_vec(),
                    env,
                };
            }
        }
    }
}

/// `cargo [+toolchain] run ...`: the package, the binary and the
/// arguments after `--`.
fn cargo(words: &[String], env: Vec<(String, String)>) -> Invocation {
    let mut words = words.iter().skip_while(|w| w.starts_with('+'));
    if words.next().map(String::as_str) != Some("run") {
        return Invocation::Other;
    }
    let (mut package, mut bin, mut args) = (None, None, vec![]);
    while let Some(word) = words.next() {
        let value = |flag: &str, short: Option<&str>| {
            word.strip_prefix(flag)
                .and_then(|v| v.strip_prefix('='))
                .or_else(|| {
                    short
                        .and_then(|s| word.strip_prefix(s))
                        .filter(|v| !v.is_empty())
                })
                .map(str::to_owned)
        };
        match word.as_str() {
            "--" => {
                args = words.cloned().collect();
                break;
            }
            "-p" | "--package" => package = words.next().cloned(),
            "--bin" => bin = words.next().cloned(),
            "--example" => return Invocation::Other,
            // Options of `cargo run` that take a value.
            "--profile" | "--features" | "-F" | "--target" | "--target-dir" | "--manifest-path"
            | "-j" | "--jobs" | "--color" | "--config" | "-Z" => {
                words.next();
            }
            _ => {
                if let Some(p) = value("--package", Some("-p")) {
                    package = Some(p);
                } else if let Some(b) = value("--bin", None) {
                    bin = Some(b);
                }
            }
        }
    }
    Invocation::Cargo {
        package,
        bin,
        args,
        env,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<Vec<String>> {
        simple_commands(line).into_iter().map(|s| s.words).collect()
    }

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn words_quotes_and_escapes() {
        assert_eq!(
            lex(r#"a 'b c' "d \"e\" $f" g\ h '' i#j"#),
            vec![
                Token::Word("a".into()),
                Token::Word("b c".into()),
                Token::Word("d \"e\" $f".into()),
                Token::Word("g h".into()),
                Token::Word(String::new()),
                Token::Word("i#j".into()),
            ]
        );
    }

    #[test]
    fn operators_split_commands_and_redirections_vanish() {
        assert_eq!(
            words("a x && b y; c | d 2>&1 > out.log & e < in.txt # f g"),
            vec![
                strings(&["a", "x"]),
                strings(&["b", "y"]),
                strings(&["c"]),
                strings(&["d"]),
                strings(&["e"]),
            ]
        );
        assert_eq!(
            words("X=$(enos-signer list --product-key P) || (cd d && run >>log)"),
            vec![
                strings(&["X="]),
                strings(&["enos-signer", "list", "--product-key", "P"]),
                strings(&["cd", "d"]),
                strings(&["run"])
            ]
        );
        assert_eq!(
            words("a '|' \"&&\" b>c"),
            vec![strings(&["a", "|", "&&", "b"])]
        );
        assert_eq!(
            words("sign --product-key <PK> <dev.csv>"),
            vec![strings(&["sign", "--product-key", "<PK>", "<dev.csv>"])]
        );
        assert_eq!(
            simple_commands("cat <<'EOF' > f"),
            vec![Simple {
                words: strings(&["cat"]),
                heredoc: Some("EOF".into())
            }]
        );
    }

    #[test]
    fn prefixes_are_read() {
        let run = |line: &str| invocation(&simple_commands(line).remove(0).words);
        assert_eq!(
            run("RUST_LOG=debug A=1 sudo -u enos -E enos-agent run --config c"),
            Invocation::Run {
                program: "enos-agent".into(),
                args: strings(&["run", "--config", "c"]),
                env: vec![
                    ("RUST_LOG".into(), "debug".into()),
                    ("A".into(), "1".into())
                ],
            }
        );
        assert_eq!(
            run("exec env -i B=2 ./target/release/enos-agent run"),
            Invocation::Run {
                program: "./target/release/enos-agent".into(),
                args: strings(&["run"]),
                env: vec![("B".into(), "2".into())],
            }
        );
        assert_eq!(
            run("cargo run --release -p enos-e2e --bin=enos-fleet -- all --agents 5"),
            Invocation::Cargo {
                package: Some("enos-e2e".into()),
                bin: Some("enos-fleet".into()),
                args: strings(&["all", "--agents", "5"]),
                env: vec![],
            }
        );
        assert_eq!(
            run("cargo run -penos-sandbox"),
            Invocation::Cargo {
                package: Some("enos-sandbox".into()),
                bin: None,
                args: vec![],
                env: vec![],
            }
        );
        assert_eq!(run("cargo build -p enos-agent"), Invocation::Other);
        assert_eq!(
            run("export A=1 B"),
            Invocation::Export(vec![("A".into(), "1".into())])
        );
    }

    #[test]
    fn logical_lines_join_continuations_and_skip_output() {
        let fence = |lang: &str, text: &str| Fence {
            lang: lang.into(),
            lines: text
                .lines()
                .enumerate()
                .map(|(i, l)| (i + 10, l.to_owned()))
                .collect(),
        };
        let texts = |lines: Vec<Logical>| -> Vec<(usize, String)> {
            lines.into_iter().map(|l| (l.line, l.text)).collect()
        };
        let sh = fence(
            "sh",
            "$ a --x \\\n    --y \\\\\nb\ncat <<EOF\nenos-agent bogus\nEOF\nc",
        );
        assert_eq!(
            texts(logical_lines(&sh, false)),
            vec![
                (10, "a --x --y \\\\".to_owned()),
                (12, "b".to_owned()),
                (13, "cat <<EOF".to_owned()),
                (16, "c".to_owned()),
            ]
        );
        let console = fence(
            "console",
            "$ enos-agent check \\\n  --config c\nok: connected\n$ next",
        );
        assert_eq!(
            texts(logical_lines(&console, true)),
            vec![
                (10, "enos-agent check --config c".to_owned()),
                (13, "next".to_owned())
            ]
        );
        let synopsis = fence(
            "sh",
            "x sign [--client-id ID] [--m a|b|c] --secret-file PATH|-",
        );
        assert_eq!(
            texts(logical_lines(&synopsis, false)),
            vec![(
                10,
                "x sign --client-id ID --m a --secret-file PATH".to_owned()
            )]
        );
    }
}
