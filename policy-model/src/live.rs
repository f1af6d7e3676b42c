//! A policy engine kept current by patches, for sources that change one object at a time (Kubernetes mode).
//!
//! **Owns:** the endpoint table patched per endpoint, and every policy object's compiled rules (matchers, peer and
//! subject identity sets) kept across changes. An endpoint patch that allocates or releases an identity only
//! evaluates the policies' selectors against that one identity; one that does not only rebinds the endpoint's IP.
//! A policy object's change recompiles that object alone. [`LiveEngine::engine`] then assembles an immutable
//! [`PolicyEngine`] from the kept pieces, in object order, exactly as [`PolicyEngine::compile`] would from the same
//! state (a stale allow left by a patch would be a policy bypass; the tests compare both).
//!
//! Identity numbers are allocated as endpoints arrive (lowest free number) and never renumbered while held, so
//! they can differ from the sorted numbering of [`EndpointTable::new`]; verdicts do not depend on them.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::engine::{CompiledPolicy, PolicyEngine};
use crate::error::PolicyError;
use crate::identity::{Endpoint, EndpointTable, IdentityChange};
use crate::load::Policy;
use crate::selector_index::{SelectorIndex, Universe};

/// The patched state; `K` names a policy object (its order is the policy order of the engine).
#[derive(Debug)]
pub struct LiveEngine<K> {
    endpoints: EndpointTable,
    objects: BTreeMap<K, CompiledObject>,
    index: SelectorIndex,
}

/// One object's policies and their compilation.
#[derive(Debug)]
struct CompiledObject {
    source: Arc<Vec<Policy>>,
    compiled: Vec<CompiledPolicy>,
}

impl<K: Ord> Default for LiveEngine<K> {
    fn default() -> Self {
        // The table of no endpoints still has the reserved identities (host, world), which selectors may name.
        let endpoints = EndpointTable::new(Vec::new()).expect("no endpoints is a valid table");
        let mut index = SelectorIndex::default();
        for id in endpoints.identities() {
            if let Some(set) = endpoints.label_set(id) {
                index.add(id, set);
            }
        }
        LiveEngine {
            endpoints,
            objects: BTreeMap::new(),
            index,
        }
    }
}

impl<K: Ord + Clone> LiveEngine<K> {
    /// The current endpoint table.
    pub fn endpoints(&self) -> &EndpointTable {
        &self.endpoints
    }

    /// Adds an endpoint or replaces the one of the same `namespace/name`. Rejects (changing nothing) an endpoint
    /// whose IP another endpoint holds, or without name or namespace.
    pub fn upsert_endpoint(&mut self, endpoint: Endpoint) -> Result<(), PolicyError> {
        let changes = self.endpoints.upsert(endpoint)?;
        self.follow(&changes);
        Ok(())
    }

    /// Removes the endpoint `namespace/name`, if present.
    pub fn remove_endpoint(&mut self, namespace: &str, name: &str) {
        let changes = self.endpoints.remove(namespace, name);
        self.follow(&changes);
    }

    /// Patches every compiled object for identities allocated or released.
    fn follow(&mut self, changes: &[IdentityChange]) {
        for change in changes {
            match change {
                IdentityChange::Added(id) => {
                    let Some(set) = self.endpoints.label_set(*id) else {
                        continue;
                    };
                    self.index.add(*id, set);
                    for object in self.objects.values_mut() {
                        let pairs = object.compiled.iter_mut().zip(object.source.iter());
                        for (compiled, policy) in pairs {
                            compiled.identity_added(policy, *id, set);
                        }
                    }
                }
                IdentityChange::Removed(id, set) => {
                    self.index.remove(*id, set);
                    for object in self.objects.values_mut() {
                        for compiled in &mut object.compiled {
                            compiled.identity_removed(*id);
                        }
                    }
                }
            }
        }
    }

    /// Sets object `key`'s policies. Passing the `Arc` already installed does nothing (no recompilation). If one of
    /// the policies fails to compile, the object's previous version (if any) stays installed and the errors are
    /// returned.
    pub fn set_policies(
        &mut self,
        key: K,
        policies: Arc<Vec<Policy>>,
    ) -> Result<(), Vec<PolicyError>> {
        if self
            .objects
            .get(&key)
            .is_some_and(|o| Arc::ptr_eq(&o.source, &policies))
        {
            return Ok(());
        }
        let mut compiled = Vec::with_capacity(policies.len());
        let mut errors = Vec::new();
        let universe = Universe::new(&self.endpoints, Some(&self.index));
        for policy in policies.iter() {
            match CompiledPolicy::new(policy, &universe) {
                Ok(c) => compiled.push(c),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        self.objects.insert(
            key,
            CompiledObject {
                source: policies,
                compiled,
            },
        );
        Ok(())
    }

    /// The policies installed for `key`.
    pub fn policies(&self, key: &K) -> Option<&Arc<Vec<Policy>>> {
        self.objects.get(key).map(|o| &o.source)
    }

    /// Removes object `key`'s policies; whether it had any.
    pub fn remove_policies(&mut self, key: &K) -> bool {
        self.objects.remove(key).is_some()
    }

    /// Keeps only the objects `keep` says yes to.
    pub fn retain_policies(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.objects.retain(|k, _| keep(k));
    }

    /// The engine for the current state (cheap: the compiled pieces are shared, not rebuilt).
    pub fn engine(&self) -> PolicyEngine {
        PolicyEngine::assemble(
            &self.endpoints,
            self.objects.values().flat_map(|o| o.compiled.iter()),
        )
    }
}
