//! The node limit (docs/api.md section 10): before a document runs, how many list items
//! its answer can hold, judged from the document and a few numbers about the published
//! packages, the way GitHub's GraphQL API judges its node limit from `first`/`last`.
//! Also the one-`syncAttempts`-per-operation rule. Pure functions, unit-tested here.
//!
//! The count multiplies down the tree: `packages { questions }` holds every published
//! package and every question in them; thirty aliases of it hold thirty times that.
//! Fields are counted as written (aliases separately, fragments expanded), which is never
//! less than what the answer holds after field merging.
use std::collections::HashMap;

use async_graphql::{
    Name,
    parser::types::{ExecutableDocument, OperationDefinition, Selection, SelectionSet},
};

/// What the answer's lists can hold, from the published packages and fixed bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListSizes {
    /// Published packages: what `packages` can return.
    pub packages: u64,
    /// Questions over all published packages: what `packages { questions }` can return.
    pub total_questions: u64,
    /// Questions of the largest published package: what one package's `questions` holds.
    pub max_questions: u64,
}

/// Items of a list whose size depends on data this check does not read (a user's
/// sessions, grants, sync results): the page size of the largest page such a list serves.
const OTHER_LIST_ITEMS: u64 = 500;

/// Media references one question can have: one per placement.
const MEDIA_PER_QUESTION: u64 = 7;

/// What the objects of a selection set are, which decides the size of their lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Parent {
    /// Any object whose lists are not package content (the roots included).
    Other,
    /// The packages of `packages`: their `questions` hold the average share of all.
    PackageList,
    /// One package (`package`, `packageDelta { package from }`).
    Package,
    /// A question snapshot.
    Question,
}

/// The list size and child kind of a field, or `None` for a field that is not a list.
fn field_shape(parent: Parent, name: &str, sizes: &ListSizes) -> (Option<u64>, Parent) {
    match (parent, name) {
        (_, "packages") => (Some(sizes.packages), Parent::PackageList),
        (_, "package" | "from") => (None, Parent::Package),
        (Parent::Package, "questions") => (Some(sizes.max_questions), Parent::Question),
        (Parent::PackageList, "questions") => (
            Some(
                sizes
                    .total_questions
                    .div_ceil(sizes.packages.max(1))
                    .max(u64::from(sizes.total_questions > 0)),
            ),
            Parent::Question,
        ),
        (_, "upserted") => (Some(sizes.max_questions), Parent::Question),
        (_, "removed") => (Some(sizes.max_questions), Parent::Other),
        (Parent::Question, "media") => (Some(MEDIA_PER_QUESTION), Parent::Other),
        (_, "mySessions" | "sessions" | "answers" | "results" | "myAccess" | "accessGrants") => {
            (Some(OTHER_LIST_ITEMS), Parent::Other)
        }
        _ => (None, Parent::Other),
    }
}

/// The list items the answer to `doc` can hold (saturating). The operation named, or,
/// when the name matches nothing or several operations are unnamed, the costliest one.
pub fn node_count(doc: &ExecutableDocument, operation: Option<&str>, sizes: &ListSizes) -> u64 {
    let mut counter = Counter {
        doc,
        sizes,
        memo: HashMap::new(),
        open: Vec::new(),
    };
    match super::document::selected_operation(doc, operation) {
        Some(op) => counter.set(&op.selection_set.node, Parent::Other),
        None => doc
            .operations
            .iter()
            .map(|(_, op)| counter.set(&op.node.selection_set.node, Parent::Other))
            .max()
            .unwrap_or(0),
    }
}

struct Counter<'a> {
    doc: &'a ExecutableDocument,
    sizes: &'a ListSizes,
    /// Per fragment and parent kind, its count per parent object: a fragment spread many
    /// times is walked once.
    memo: HashMap<(Name, Parent), u64>,
    /// Fragments being walked (a cycle counts nothing here; validation refuses it).
    open: Vec<Name>,
}

impl Counter<'_> {
    /// Nodes under one object of kind `parent` for this selection set.
    fn set(&mut self, set: &SelectionSet, parent: Parent) -> u64 {
        let mut total = 0u64;
        for item in &set.items {
            let nodes = match &item.node {
                Selection::Field(field) => {
                    let name = field.node.name.node.as_str();
                    // Introspection answers are bounded by the schema, not by data.
                    if name.starts_with("__") {
                        continue;
                    }
                    let (items, child) = field_shape(parent, name, self.sizes);
                    let below = self.set(&field.node.selection_set.node, child);
                    match items {
                        Some(n) => n.saturating_add(n.saturating_mul(below)),
                        None => below,
                    }
                }
                Selection::InlineFragment(fragment) => {
                    self.set(&fragment.node.selection_set.node, parent)
                }
                Selection::FragmentSpread(spread) => {
                    self.fragment(&spread.node.fragment_name.node, parent)
                }
            };
            total = total.saturating_add(nodes);
        }
        total
    }

    fn fragment(&mut self, name: &Name, parent: Parent) -> u64 {
        if let Some(&nodes) = self.memo.get(&(name.clone(), parent)) {
            return nodes;
        }
        if self.open.contains(name) {
            return 0;
        }
        let Some(fragment) = self.doc.fragments.get(name) else {
            return 0;
        };
        self.open.push(name.clone());
        let nodes = self.set(&fragment.node.selection_set.node, parent);
        self.open.pop();
        self.memo.insert((name.clone(), parent), nodes);
        nodes
    }
}

/// Whether the count depends on the published packages at all: a document without package
/// fields is judged without reading them (and without the database).
pub fn needs_package_sizes(doc: &ExecutableDocument, operation: Option<&str>) -> bool {
    let probe = ListSizes {
        packages: 1,
        total_questions: 1,
        max_questions: 1,
    };
    node_count(doc, operation, &ListSizes::default()) != node_count(doc, operation, &probe)
}

/// The response keys (alias or name) of root fields named `field` in the operation that
/// runs (every operation when it is ambiguous), through fragments. Fields sharing a
/// response key merge into one, so this is the count after GraphQL's field merging.
pub fn root_field_keys(doc: &ExecutableDocument, operation: Option<&str>, field: &str) -> usize {
    let operations: Vec<&OperationDefinition> =
        match super::document::selected_operation(doc, operation) {
            Some(op) => vec![op],
            None => doc.operations.iter().map(|(_, op)| &op.node).collect(),
        };
    operations
        .into_iter()
        .map(|op| {
            let mut keys = std::collections::HashSet::new();
            let mut pending: Vec<&SelectionSet> = vec![&op.selection_set.node];
            let mut expanded = std::collections::HashSet::new();
            while let Some(set) = pending.pop() {
                for item in &set.items {
                    match &item.node {
                        Selection::Field(f) if f.node.name.node.as_str() == field => {
                            keys.insert(f.node.response_key().node.clone());
                        }
                        Selection::Field(_) => {}
                        Selection::InlineFragment(f) => pending.push(&f.node.selection_set.node),
                        Selection::FragmentSpread(spread) => {
                            let name = &spread.node.fragment_name.node;
                            if expanded.insert(name.clone())
                                && let Some(fragment) = doc.fragments.get(name)
                            {
                                pending.push(&fragment.node.selection_set.node);
                            }
                        }
                    }
                }
            }
            keys.len()
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use async_graphql::parser::parse_query;

    fn count(text: &str, sizes: ListSizes) -> u64 {
        node_count(&parse_query(text).unwrap(), None, &sizes)
    }

    const QUESTION_FIELDS: &str = "id questionId stem options correctIndex explanationMd yearId blockId themeId cognitiveLevel difficulty";

    fn bank() -> ListSizes {
        // One full package of 5,000 questions and a few small ones.
        ListSizes {
            packages: 4,
            total_questions: 5_300,
            max_questions: 5_000,
        }
    }

    #[test]
    fn one_full_package_is_its_question_count() {
        let q = format!(
            "query($id: UUID!) {{ package(id: $id) {{ id questions {{ {QUESTION_FIELDS} }} }} }}"
        );
        assert_eq!(count(&q, bank()), 5_000);
    }

    #[test]
    fn packages_with_questions_hold_every_question() {
        let q = format!("{{ packages {{ id questions {{ {QUESTION_FIELDS} }} }} }}");
        // 4 packages, 1,325 questions each on average: every question once.
        assert_eq!(count(&q, bank()), 4 + 4 * 1_325);
    }

    #[test]
    fn aliases_multiply_the_count() {
        let one = format!("packages {{ id questions {{ {QUESTION_FIELDS} }} }}");
        let thirty: String = (0..30).map(|i| format!("a{i}: {one} ")).collect();
        let nodes = count(&format!("{{ {thirty} }}"), bank());
        assert_eq!(nodes, 30 * (4 + 4 * 1_325));
        assert!(nodes > 20_000);
    }

    #[test]
    fn fragments_are_expanded_and_nested_lists_multiply() {
        let q = "{ ...A } fragment A on Query { packages { ...B } x: packages { ...B } } \
                 fragment B on TestPackage { questions { media { url } } }";
        let per_list = 4 + 4 * (1_325 + 1_325 * 7);
        assert_eq!(count(q, bank()), 2 * per_list);
        // A fragment cycle terminates (validation refuses it later).
        assert_eq!(count("{ ...A } fragment A on Query { ...A }", bank()), 0);
    }

    #[test]
    fn exponential_fragments_are_walked_once_and_saturate() {
        let mut text = String::from("{ ...F0 } ");
        for i in 0..70 {
            text.push_str(&format!(
                "fragment F{i} on Query {{ a: packages {{ id }} ...F{n} ...F{n} }} ",
                n = i + 1
            ));
        }
        text.push_str("fragment F70 on Query { packages { id } }");
        assert_eq!(count(&text, bank()), u64::MAX);
    }

    #[test]
    fn introspection_counts_nothing() {
        let q = "{ __schema { types { name fields { name args { name } } } } }";
        assert_eq!(count(q, bank()), 0);
    }

    #[test]
    fn package_sizes_are_needed_only_for_package_fields() {
        let needs = |text: &str| needs_package_sizes(&parse_query(text).unwrap(), None);
        assert!(!needs("{ syncStatus { ackedCount } mySessions { id } }"));
        assert!(!needs("{ __schema { types { name } } }"));
        assert!(needs("{ packages { id } }"));
        assert!(needs(
            "query($id: UUID!) { package(id: $id) { questions { id } } }"
        ));
    }

    #[test]
    fn delta_lists_count_as_a_full_package() {
        let q =
            "{ packageDelta(id: \"a\", from: \"b\") { package { id } upserted { id } removed } }";
        assert_eq!(count(q, bank()), 10_000);
    }

    #[test]
    fn sync_attempts_are_counted_after_merging() {
        let keys = |text: &str| root_field_keys(&parse_query(text).unwrap(), None, "syncAttempts");
        assert_eq!(
            keys("mutation { syncAttempts(input: $i) { results { status } } }"),
            1
        );
        assert_eq!(
            keys(
                "mutation { syncAttempts(input: $i) { results { status } } syncAttempts(input: $i) { results { clientAttemptId } } }"
            ),
            1
        );
        assert_eq!(
            keys(
                "mutation { a: syncAttempts(input: $i) { results { status } } b: syncAttempts(input: $i) { results { status } } }"
            ),
            2
        );
        assert_eq!(
            keys(
                "mutation { ...F ... on Mutation { b: syncAttempts(input: $i) { results { status } } } } fragment F on Mutation { syncAttempts(input: $i) { results { status } } }"
            ),
            2
        );
        assert_eq!(
            keys(
                "mutation A { syncAttempts(input: $i) { results { status } } } mutation B { a: syncAttempts(input: $i) { results { status } } b: syncAttempts(input: $i) { results { status } } }"
            ),
            2
        );
    }
}
