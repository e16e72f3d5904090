//! Credentials in URLs never leave the process: every URL that can reach an error, a log line,
//! a task outcome, a dead letter or an API answer goes through here first.
//!
//! An operator may configure `https://user:pass@host/run?token=abc`; what anyone else sees is
//! `https://user:***@host/run?token=***`:
//! - a password becomes `***` (the user name stays, it says which account);
//! - a user name without a password is the secret itself (`https://<token>@host`) and becomes
//!   `***`;
//! - every query value becomes `***` (keys stay, they say what was passed), and so does a
//!   fragment.
//!
//! Text that does not parse as a URL is redacted the same way by its shape, so a malformed
//! URL in a config error does not leak either.
//!
//! Absolute server paths (where the projection or the log live) are not for API answers
//! either: [`paths_in`] replaces them in the text of server errors.

use url::Url;

/// What a secret part of a URL shows as.
pub const MASK: &str = "***";

/// `url` with its credentials, query values and fragment masked.
pub fn url(url: &Url) -> String {
    if !has_secrets(url) {
        return url.to_string();
    }
    let mut shown = url.clone();
    // `set_password`/`set_username` fail only for URLs that cannot have credentials (no
    // host), and those have none to hide.
    if url.password().is_some() {
        let _ = shown.set_password(Some(MASK));
    } else if !url.username().is_empty() {
        let _ = shown.set_username(MASK);
    }
    if url.query().is_some() {
        let keys: Vec<String> = url.query_pairs().map(|(key, _)| key.into_owned()).collect();
        shown.query_pairs_mut().clear().extend_pairs(keys.iter().map(|key| (key.as_str(), MASK)));
    }
    if url.fragment().is_some() {
        shown.set_fragment(Some(MASK));
    }
    shown.to_string()
}

fn has_secrets(url: &Url) -> bool {
    !url.username().is_empty() || url.password().is_some() || url.query().is_some() || url.fragment().is_some()
}

/// A URL given as text (from config), masked as [`url`] does; text that is not a URL is
/// masked by its shape: what precedes an `@` in the authority, and everything after `?` or `#`.
pub fn url_text(text: &str) -> String {
    match Url::parse(text) {
        Ok(parsed) if parsed.has_host() && has_secrets(&parsed) => url(&parsed),
        // Unchanged, not re-serialised: `http://h` stays `http://h`, not `http://h/`.
        Ok(parsed) if parsed.has_host() => text.to_string(),
        // Without a host it is no URL an agent is called at: `user:pass@agent:8080` parses
        // with `user` as its scheme and the password in its path.
        _ => by_shape(text),
    }
}

fn by_shape(text: &str) -> String {
    let (scheme, rest) = match text.find("://") {
        Some(at) => text.split_at(at + 3),
        None => ("", text),
    };
    let (before_query, query) = match rest.find(['?', '#']) {
        Some(at) => (&rest[..at], Some(&rest[at..at + 1])),
        None => (rest, None),
    };
    let authority_end = before_query.find('/').unwrap_or(before_query.len());
    let mut out = String::from(scheme);
    match before_query[..authority_end].rfind('@') {
        Some(at) => {
            out.push_str(MASK);
            out.push_str(&before_query[at..]);
        }
        None => out.push_str(before_query),
    }
    if let Some(mark) = query {
        out.push_str(mark);
        out.push_str(MASK);
    }
    out
}

/// `text` with every URL in it (`scheme://…` up to white space, a quote or a bracket) masked
/// as [`url_text`] does: for messages that embed a URL, as reqwest's errors do.
pub fn urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let scheme_start = rest[..at].rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))).map_or(0, |i| i + 1);
        let tail = &rest[at + 3..];
        let end = at
            + 3
            + tail.find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>' | '(' | ')' | '[' | ']' | '{' | '}')).unwrap_or(tail.len());
        out.push_str(&rest[..scheme_start]);
        out.push_str(&url_text(&rest[scheme_start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// What an absolute server path shows as in an answer.
pub const PATH_MASK: &str = "<server path>";

/// `text` with every absolute file path in it (a `/` at the start of a word, followed by
/// more of the path) replaced by [`PATH_MASK`]. URLs are left alone: their slashes follow
/// `scheme:`, not the start of a word.
pub fn paths_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    let mut word_start = true;
    while let Some((i, c)) = chars.next() {
        let next_is_path = chars.peek().is_some_and(|(_, n)| !n.is_whitespace() && !matches!(n, '/' | ':' | ',' | ')' | ']' | '"' | '\''));
        if c == '/' && word_start && next_is_path {
            let rest = &text[i..];
            let len = rest.find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | ')' | ']' | ',')).unwrap_or(rest.len());
            // A path followed by `: reason` or a full stop keeps its punctuation.
            let path = rest[..len].trim_end_matches([':', '.', ';']);
            out.push_str(PATH_MASK);
            for _ in 1..path.chars().count() {
                chars.next();
            }
            word_start = false;
            continue;
        }
        out.push(c);
        word_start = c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '(' | '[' | '=' | '{');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_query_values_and_fragments_are_masked() {
        assert_eq!(url_text("https://user:pass@host/x?token=abc"), "https://user:***@host/x?token=***");
        assert_eq!(url_text("https://ghp_secret@github.com/o/r"), "https://***@github.com/o/r");
        assert_eq!(url_text("http://h:9/run?a=1&b&c=3#frag"), "http://h:9/run?a=***&b=***&c=***#***");
        // Nothing secret: unchanged, byte for byte.
        assert_eq!(url_text("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
    }

    #[test]
    fn text_that_is_not_a_url_is_masked_by_its_shape() {
        assert_eq!(url_text("user:pass@agent:8080/run?key=k"), "***@agent:8080/run?***");
        assert_eq!(url_text("http://user:pass@host:notaport/x"), "http://***@host:notaport/x");
        assert_eq!(url_text("agent:8080"), "agent:8080");
    }

    #[test]
    fn absolute_paths_are_masked_and_urls_and_routes_in_words_kept() {
        assert_eq!(
            paths_in("projection store at /srv/agentlog/projection/gen-3: IO error: While open a file: /srv/x/LOCK."),
            "projection store at <server path>: IO error: While open a file: <server path>."
        );
        assert_eq!(paths_in("creating `/var/lib/a b` failed"), "creating `<server path> b` failed");
        assert_eq!(paths_in("see http://h:9/a/b and a/b/c"), "see http://h:9/a/b and a/b/c");
        assert_eq!(paths_in("ratio 3 / 4"), "ratio 3 / 4");
    }

    #[test]
    fn urls_inside_messages_are_masked() {
        let message = "error sending request for url (http://u:s3cret@127.0.0.1:9/agent?token=t0k): connection refused";
        let shown = urls_in(message);
        assert_eq!(shown, "error sending request for url (http://u:***@127.0.0.1:9/agent?token=***): connection refused");
        assert_eq!(urls_in("no url here"), "no url here");
        assert_eq!(urls_in("two: https://a:b@x/ and ftp://y/?k=v"), "two: https://a:***@x/ and ftp://y/?k=***");
    }
}
