//! Which identities carry which label, so an endpoint selector with a `matchLabels` (`In`) requirement or a fixed
//! namespace looks only at the identities that can match instead of at every identity (1,000 policies x 1,000
//! identities at start-up otherwise). It only narrows: the full selector still decides on each candidate.

use std::collections::{BTreeSet, HashMap};

use crate::identity::{EndpointTable, Identity};
use crate::labels::{LabelSet, NAMESPACE_LABEL, Requirement};
use crate::load::{NsMatch, Peer};

/// label key -> value -> identities with that label.
#[derive(Debug, Default)]
pub(crate) struct SelectorIndex {
    by_label: HashMap<String, HashMap<String, BTreeSet<Identity>>>,
}

impl SelectorIndex {
    pub(crate) fn add(&mut self, id: Identity, set: &LabelSet) {
        for (k, v) in &set.0 {
            self.by_label
                .entry(k.clone())
                .or_default()
                .entry(v.clone())
                .or_default()
                .insert(id);
        }
    }

    /// Forgets `id`, which carried the labels `set`.
    pub(crate) fn remove(&mut self, id: Identity, set: &LabelSet) {
        for (k, v) in &set.0 {
            let Some(values) = self.by_label.get_mut(k) else {
                continue;
            };
            if let Some(ids) = values.get_mut(v) {
                ids.remove(&id);
                if ids.is_empty() {
                    values.remove(v);
                }
            }
            if values.is_empty() {
                self.by_label.remove(k);
            }
        }
    }

    fn with(&self, key: &str, values: &[String]) -> BTreeSet<Identity> {
        let Some(by_value) = self.by_label.get(key) else {
            return BTreeSet::new();
        };
        values
            .iter()
            .filter_map(|v| by_value.get(v))
            .flatten()
            .copied()
            .collect()
    }

    /// The identities that can match `peer`; `None`: the index cannot narrow it (look at every identity).
    fn candidates(&self, peer: &Peer) -> Option<BTreeSet<Identity>> {
        let Peer::Endpoints { selector, ns } = peer else {
            return Some(BTreeSet::new());
        };
        let required = selector.requirements.iter().find_map(|r| match r {
            Requirement::In(k, vs) => Some((k.as_str(), vs.as_slice())),
            _ => None,
        });
        match (required, ns) {
            (Some((k, vs)), _) => Some(self.with(k, vs)),
            (None, NsMatch::Exact(n)) => Some(self.with(NAMESPACE_LABEL, std::slice::from_ref(n))),
            (None, _) => None,
        }
    }
}

/// The identities a compilation selects from: every identity of the table, with the index when there is one.
pub(crate) struct Universe<'a> {
    table: &'a EndpointTable,
    all: Vec<(Identity, &'a LabelSet)>,
    index: Option<&'a SelectorIndex>,
}

impl<'a> Universe<'a> {
    pub(crate) fn new(table: &'a EndpointTable, index: Option<&'a SelectorIndex>) -> Self {
        let all = table
            .identities()
            .filter_map(|id| table.label_set(id).map(|s| (id, s)))
            .collect();
        Universe { table, all, index }
    }

    /// Every endpoint identity (reserved ones left out).
    pub(crate) fn endpoint_identities(&self) -> impl Iterator<Item = Identity> + '_ {
        self.all
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| id.is_endpoint())
    }

    /// The identities (reserved ones included) `peer` selects by its endpoint selector, via the index if it narrows.
    pub(crate) fn select(
        &self,
        peer: &Peer,
        selects: impl Fn(&Peer, &LabelSet) -> bool,
    ) -> Vec<Identity> {
        match self.index.and_then(|ix| ix.candidates(peer)) {
            Some(candidates) => candidates
                .into_iter()
                .filter(|id| self.table.label_set(*id).is_some_and(|s| selects(peer, s)))
                .collect(),
            None => self
                .all
                .iter()
                .filter(|(_, s)| selects(peer, s))
                .map(|(id, _)| *id)
                .collect(),
        }
    }
}
