//! The port double's store: objects of one kind keyed as the API server keys them, by namespace
//! and name. Every test cluster lives in [`TEST_NAMESPACE`], so the methods that take a name
//! alone (and those that list) mean that namespace and read like a map of names; the port
//! double itself uses the `*_in` methods with the namespace of each request.

use std::{
    collections::BTreeMap,
    ops::{Index, IndexMut},
};

use kube::Resource;

/// The namespace of every test cluster (`cluster_from_yaml`) unless its YAML names another.
pub const TEST_NAMESPACE: &str = "omero";

#[derive(Clone, Debug)]
pub struct Objects<K>(BTreeMap<(String, String), K>);

impl<K> Default for Objects<K> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

fn key(ns: &str, name: &str) -> (String, String) {
    (ns.to_string(), name.to_string())
}

impl<K: Resource> Objects<K> {
    // Name-only: the test namespace.

    pub fn get(&self, name: &str) -> Option<&K> {
        self.get_in(TEST_NAMESPACE, name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut K> {
        self.get_mut_in(TEST_NAMESPACE, name)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Stores `object` as `name` in the test namespace, which it is given if it names none.
    pub fn insert(&mut self, name: String, mut object: K) -> Option<K> {
        let ns = object.meta_mut().namespace.get_or_insert_with(|| TEST_NAMESPACE.into());
        assert_eq!(ns, TEST_NAMESPACE, "insert stores in the test namespace; use put for another");
        self.0.insert((TEST_NAMESPACE.into(), name), object)
    }

    pub fn remove(&mut self, name: &str) -> Option<K> {
        self.remove_in(TEST_NAMESPACE, name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &K)> {
        self.iter_in(TEST_NAMESPACE)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut K)> {
        self.0.iter_mut().filter(|((ns, _), _)| ns == TEST_NAMESPACE).map(|((_, name), o)| (name, o))
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.iter().map(|(name, _)| name)
    }

    pub fn values(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(_, o)| o)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut K> {
        self.iter_mut().map(|(_, o)| o)
    }

    /// Keeps the objects of the test namespace for which `keep` holds, and every other one.
    pub fn retain(&mut self, mut keep: impl FnMut(&String, &mut K) -> bool) {
        self.0.retain(|(ns, name), o| ns != TEST_NAMESPACE || keep(name, o));
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // Namespace-aware: what the port double serves requests from.

    pub fn get_in(&self, ns: &str, name: &str) -> Option<&K> {
        self.0.get(&key(ns, name))
    }

    pub fn get_mut_in(&mut self, ns: &str, name: &str) -> Option<&mut K> {
        self.0.get_mut(&key(ns, name))
    }

    pub fn remove_in(&mut self, ns: &str, name: &str) -> Option<K> {
        self.0.remove(&key(ns, name))
    }

    /// Stores `object` under its own namespace and name, which it must carry.
    pub fn put(&mut self, object: K) -> Option<K> {
        let meta = object.meta();
        let ns = meta.namespace.clone().expect("a stored object carries its namespace");
        let name = meta.name.clone().expect("a stored object has a name");
        self.0.insert((ns, name), object)
    }

    /// The objects of namespace `ns`, by name.
    pub fn iter_in<'a>(&'a self, ns: &'a str) -> impl Iterator<Item = (&'a String, &'a K)> + 'a {
        self.0.iter().filter(move |((n, _), _)| n == ns).map(|((_, name), o)| (name, o))
    }

    pub fn values_in<'a>(&'a self, ns: &'a str) -> impl Iterator<Item = &'a K> + 'a {
        self.iter_in(ns).map(|(_, o)| o)
    }

    /// Every object, whatever its namespace, with it: `(namespace, name, object)`.
    pub fn all(&self) -> impl Iterator<Item = (&str, &str, &K)> {
        self.0.iter().map(|((ns, name), o)| (ns.as_str(), name.as_str(), o))
    }

    /// Keeps the objects, of every namespace, for which `keep` holds.
    pub fn retain_all(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.0.retain(|_, o| keep(o));
    }
}

impl<K: Resource, Q: AsRef<str> + ?Sized> Index<&Q> for Objects<K> {
    type Output = K;

    /// The object of the test namespace named so; panics when there is none, as a map does.
    fn index(&self, name: &Q) -> &K {
        let name = name.as_ref();
        self.get(name).unwrap_or_else(|| panic!("no object {TEST_NAMESPACE}/{name}"))
    }
}

impl<K: Resource, Q: AsRef<str> + ?Sized> IndexMut<&Q> for Objects<K> {
    fn index_mut(&mut self, name: &Q) -> &mut K {
        let name = name.as_ref();
        self.get_mut(name).unwrap_or_else(|| panic!("no object {TEST_NAMESPACE}/{name}"))
    }
}

/// Adds objects under their own namespace and name (see [`Objects::put`]).
impl<K: Resource> Extend<K> for Objects<K> {
    fn extend<I: IntoIterator<Item = K>>(&mut self, objects: I) {
        for object in objects {
            self.put(object);
        }
    }
}

/// Every object, of every namespace: what moves when one double's objects are copied into
/// another's (`extend`).
impl<K> IntoIterator for Objects<K> {
    type Item = K;
    type IntoIter = std::collections::btree_map::IntoValues<(String, String), K>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_values()
    }
}

/// Secret values by namespace, Secret name and key. `insert` means the test namespace.
#[derive(Clone, Debug, Default)]
pub struct Secrets(BTreeMap<(String, String, String), String>);

impl Secrets {
    /// The value of `key` in Secret `name` of the test namespace.
    pub fn insert(&mut self, (name, key): (String, String), value: String) -> Option<String> {
        self.insert_in(TEST_NAMESPACE, &name, &key, value)
    }

    pub fn insert_in(&mut self, ns: &str, name: &str, key: &str, value: String) -> Option<String> {
        self.0.insert((ns.into(), name.into(), key.into()), value)
    }

    pub fn get_in(&self, ns: &str, name: &str, key: &str) -> Option<&String> {
        self.0.get(&(ns.into(), name.into(), key.into()))
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}
