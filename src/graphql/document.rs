//! Checks on a GraphQL document before the schema sees it: how deep its text nests, how
//! many aliases it uses, which kind of operation it selects and whether it only asks for
//! introspection. Pure functions of the text or the parsed document, unit-tested here.
use std::collections::HashSet;

use async_graphql::parser::types::{
    ExecutableDocument, OperationDefinition, OperationType, Selection, SelectionSet,
};

/// The deepest bracket nesting (`{`, `[`, `(`) a document may have before it is parsed.
///
/// The parser recurses once per nesting level and gives up at 64 selection sets with its
/// own "recursion limit exceeded"; refusing earlier, on a flat scan of the text, means a
/// hostile document of any depth costs one pass and never reaches a recursive parser
/// (no stack overflow), and every such refusal is a validation failure, like the depth
/// limit. 48 brackets leave room for any query within the depth limit's range of use
/// (the standard introspection query nests 13).
pub const MAX_NESTING: usize = 48;

/// The most lexical tokens a document may have before it is parsed.
///
/// Parsing costs about 2 s per 500 kB of fields in a debug build (the body limit allows
/// 1 MB), all of it before the complexity limit can refuse the document. An app's largest
/// operation is a few thousand tokens (the standard introspection query is about 300);
/// 20,000 leaves a wide margin and keeps parsing in the low milliseconds.
pub const MAX_TOKENS: usize = 20_000;

/// Fails with a message when the document's brackets nest deeper than `max_nesting` or it
/// has more than `max_tokens` tokens.
///
/// Brackets inside strings, block strings and comments do not count; a string is one
/// token, commas and comments none. The scan is iterative and stops at the first excess.
pub fn check_size(text: &str, max_nesting: usize, max_tokens: usize) -> Result<(), String> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut tokens = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if !(byte.is_ascii_whitespace() || byte == b',' || byte == b'#') {
            tokens += 1;
            if tokens > max_tokens {
                return Err(format!("the document has more than {max_tokens} tokens"));
            }
        }
        match byte {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                i += 3;
                loop {
                    if i >= bytes.len() {
                        break;
                    }
                    if bytes[i..].starts_with(b"\\\"\"\"") {
                        i += 4;
                    } else if bytes[i..].starts_with(b"\"\"\"") {
                        i += 2;
                        break;
                    } else {
                        i += 1;
                    }
                }
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'.' if bytes[i..].starts_with(b"...") => i += 2,
            // A name or a number is one token.
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' => {
                while i + 1 < bytes.len()
                    && (bytes[i + 1].is_ascii_alphanumeric()
                        || matches!(bytes[i + 1], b'_' | b'.' | b'+' | b'-'))
                {
                    i += 1;
                }
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > max_nesting {
                    return Err(format!(
                        "the document nests deeper than {max_nesting} levels of brackets"
                    ));
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The document with the text of every comment removed (each `#` kept, so every token
/// keeps its line and column). The parser walks comments a character at a time; a
/// document that is mostly comment then costs one flat scan instead.
pub fn strip_comments(text: &str) -> std::borrow::Cow<'_, str> {
    let bytes = text.as_bytes();
    if !bytes.contains(&b'#') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                out.push_str(&text[start..=i]);
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
                start = i;
                continue;
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                    i += if bytes[i..].starts_with(b"\\\"\"\"") {
                        4
                    } else {
                        1
                    };
                }
                i += 3;
                continue;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            _ => {}
        }
        i += 1;
    }
    out.push_str(&text[start.min(text.len())..]);
    std::borrow::Cow::Owned(out)
}

/// Refuses documents with more aliased fields than allowed (cheap amplification guard).
pub fn check_alias_limit(doc: &ExecutableDocument, max_aliases: usize) -> Result<(), String> {
    // The parser bounds selection-set nesting (and `check_size` runs first), so this
    // recursion is shallow.
    fn count(set: &SelectionSet) -> usize {
        set.items
            .iter()
            .map(|item| match &item.node {
                Selection::Field(f) => {
                    usize::from(f.node.alias.is_some()) + count(&f.node.selection_set.node)
                }
                Selection::InlineFragment(f) => count(&f.node.selection_set.node),
                Selection::FragmentSpread(_) => 0,
            })
            .sum()
    }
    let mut aliases: usize = doc
        .operations
        .iter()
        .map(|(_, op)| count(&op.node.selection_set.node))
        .sum();
    aliases += doc
        .fragments
        .values()
        .map(|f| count(&f.node.selection_set.node))
        .sum::<usize>();
    if aliases > max_aliases {
        return Err(format!(
            "the query uses {aliases} aliases; at most {max_aliases} are allowed"
        ));
    }
    Ok(())
}

/// The operation a request runs: the one named, or the only one. `None` when the name
/// matches nothing or the document has several operations and no name was given (the
/// schema reports those; callers then treat the document conservatively).
pub(crate) fn selected_operation<'a>(
    doc: &'a ExecutableDocument,
    name: Option<&str>,
) -> Option<&'a OperationDefinition> {
    let mut candidates = doc.operations.iter().filter(|(op_name, _)| match name {
        Some(wanted) => op_name.is_some_and(|n| n.as_str() == wanted),
        None => true,
    });
    let first = candidates.next()?;
    if name.is_none() && candidates.next().is_some() {
        return None;
    }
    Some(&first.1.node)
}

/// True when the operation to run may be a mutation: GET must never run one, so an
/// ambiguous document counts as one when any of its operations is.
pub fn selects_mutation(doc: &ExecutableDocument, name: Option<&str>) -> bool {
    match selected_operation(doc, name) {
        Some(op) => op.ty == OperationType::Mutation,
        None => doc
            .operations
            .iter()
            .any(|(_, op)| op.node.ty == OperationType::Mutation),
    }
}

/// True when the operation to run is a query whose root fields are all introspection
/// (`__schema`, `__type`, `__typename`), through fragments too.
pub fn is_introspection_only(doc: &ExecutableDocument, name: Option<&str>) -> bool {
    let Some(op) = selected_operation(doc, name) else {
        return false;
    };
    if op.ty != OperationType::Query {
        return false;
    }
    // Walk the root level iteratively; a fragment is expanded once (cycles are refused by
    // validation later, and must not loop here).
    let mut pending: Vec<&SelectionSet> = vec![&op.selection_set.node];
    let mut expanded = HashSet::new();
    let mut saw_field = false;
    while let Some(set) = pending.pop() {
        for item in &set.items {
            match &item.node {
                Selection::Field(f) => {
                    saw_field = true;
                    if !matches!(
                        f.node.name.node.as_str(),
                        "__schema" | "__type" | "__typename"
                    ) {
                        return false;
                    }
                }
                Selection::InlineFragment(f) => pending.push(&f.node.selection_set.node),
                Selection::FragmentSpread(spread) => {
                    let name = &spread.node.fragment_name.node;
                    if expanded.insert(name.clone()) {
                        match doc.fragments.get(name) {
                            Some(fragment) => pending.push(&fragment.node.selection_set.node),
                            None => return false,
                        }
                    }
                }
            }
        }
    }
    saw_field
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::parser::parse_query;

    fn doc(text: &str) -> ExecutableDocument {
        parse_query(text).expect("test documents parse")
    }

    #[test]
    fn nesting_counts_brackets_outside_strings_and_comments() {
        assert!(check_size("{ a { b { c } } }", 3, usize::MAX).is_ok());
        assert!(check_size("{ a { b { c { d } } } }", 3, usize::MAX).is_err());
        assert!(check_size("{ a(x: [1]) }", 3, usize::MAX).is_ok());
        assert!(check_size("{ a(x: [[1]]) }", 3, usize::MAX).is_err());
        // Brackets in strings, block strings and comments are text.
        assert!(check_size(r#"{ a(x: "{{{{[[[[") }"#, 2, usize::MAX).is_ok());
        assert!(check_size(r#"{ a(x: "\"{{{{") }"#, 2, usize::MAX).is_ok());
        assert!(check_size("{ a(x: \"\"\"{{{{ \\\"\"\" {{{{\"\"\") }", 2, usize::MAX).is_ok());
        assert!(check_size("{ a # {{{{{\n }", 1, usize::MAX).is_ok());
        // Unbalanced closers never underflow.
        assert!(check_size("}}}}{ a }", 1, usize::MAX).is_ok());
    }

    #[test]
    fn nesting_scan_handles_hostile_sizes_without_recursion() {
        let deep = "{a".repeat(1_000_000) + &"}".repeat(1_000_000);
        let err = check_size(&deep, MAX_NESTING, usize::MAX).unwrap_err();
        assert!(err.contains("48"), "{err}");
        let lists = format!(
            "{{ a(x: {}1{}) }}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(check_size(&lists, MAX_NESTING, usize::MAX).is_err());
        let wide = format!("{{ {} }}", "a ".repeat(500_000));
        assert!(check_size(&wide, MAX_NESTING, usize::MAX).is_ok());
        assert!(check_size(&wide, MAX_NESTING, MAX_TOKENS).is_err());
        // An unterminated block string ends the scan.
        assert!(check_size("{ a(x: \"\"\"{{{{", 2, usize::MAX).is_ok());
    }

    #[test]
    fn tokens_are_counted_like_the_lexer() {
        // `{` `a` `(` `x` `:` `"…"` `)` `...` `F` `}`; commas and comments are not tokens.
        let text = "{ a(x: \"b c, d\"), ...F } # a comment, with words";
        assert!(check_size(text, 10, 10).is_ok());
        assert!(check_size(text, 10, 9).is_err());
        // Numbers and names are single tokens.
        assert!(check_size("{ a(x: -1.5e+10, y: abc_9) }", 10, 11).is_ok());
        assert!(check_size("{ a(x: -1.5e+10, y: abc_9) }", 10, 10).is_err());
    }

    #[test]
    fn introspection_only_through_fragments() {
        assert!(is_introspection_only(&doc("{ __typename }"), None));
        assert!(is_introspection_only(
            &doc("query Q { ...F } fragment F on Query { __schema { types { name } } }"),
            None
        ));
        assert!(!is_introspection_only(
            &doc("{ __typename ... on Query { syncStatus { ackedCount } } }"),
            None
        ));
        assert!(!is_introspection_only(
            &doc("mutation { __typename }"),
            None
        ));
        assert!(!is_introspection_only(
            &doc("query A { __typename } query B { syncStatus { ackedCount } }"),
            None
        ));
        assert!(is_introspection_only(
            &doc("query A { __typename } query B { syncStatus { ackedCount } }"),
            Some("A")
        ));
        // A fragment cycle does not loop.
        assert!(is_introspection_only(
            &doc("{ ...F } fragment F on Query { __typename ...F }"),
            None
        ));
    }

    #[test]
    fn mutation_selection_is_conservative() {
        let d = doc("query A { __typename } mutation B { __typename }");
        assert!(!selects_mutation(&d, Some("A")));
        assert!(selects_mutation(&d, Some("B")));
        assert!(selects_mutation(&d, None));
        assert!(!selects_mutation(&doc("{ __typename }"), None));
    }

    #[test]
    fn comments_are_emptied_in_place() {
        assert_eq!(strip_comments("{ a }"), "{ a }");
        assert_eq!(strip_comments("# x y\n{ a # z\n b }#"), "#\n{ a #\n b }#");
        // `#` inside strings and block strings is text.
        let text = "{ a(x: \"#1\", y: \"\"\"#2 \\\"\"\" #3\"\"\") } # c";
        assert_eq!(
            strip_comments(text),
            "{ a(x: \"#1\", y: \"\"\"#2 \\\"\"\" #3\"\"\") } #"
        );
        // Unterminated strings end the scan without panicking.
        assert_eq!(strip_comments("{ a(x: \"#"), "{ a(x: \"#");
        assert_eq!(strip_comments("{ a(x: \"\"\"#"), "{ a(x: \"\"\"#");
        let big = format!("# {}\n{{ __typename }}", "c".repeat(1_000_000));
        let started = std::time::Instant::now();
        let stripped = strip_comments(&big);
        assert_eq!(stripped, "#\n{ __typename }");
        parse_query(&stripped).unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // Errors keep their positions.
        let bad = "# comment\n{ a(";
        let pos = |t: &str| match parse_query(t).unwrap_err() {
            async_graphql::parser::Error::Syntax { start, .. } => (start.line, start.column),
            other => panic!("{other}"),
        };
        assert_eq!(pos(bad), pos(&strip_comments(bad)));
    }

    #[test]
    fn aliases_are_counted_in_fragments_too() {
        let d = doc("{ a: x b: x ...F } fragment F on Query { c: x }");
        assert!(check_alias_limit(&d, 3).is_ok());
        assert!(check_alias_limit(&d, 2).is_err());
    }
}
