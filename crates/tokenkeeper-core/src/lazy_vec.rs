//! A vector of 8 bytes that allocates nothing while empty: for the lists a
//! refresher keeps (effects waiting, leases held, refresh tokens spent),
//! which are empty for most keys most of the time. A pool holds a refresher
//! per key, so each `Vec` (24 bytes) or `VecDeque` (32) counted.

use std::fmt;
use std::ops::{Deref, DerefMut};

/// A list behind an optional box: 8 bytes, nothing allocated while empty,
/// one allocation while it holds one item, and its memory given back
/// whenever it empties.
// The box is the point: 8 bytes in place of 24. Most of these lists hold
// one item at a time (the next effect, the new token's event): that item
// lives in the box itself, so the list costs one allocation, not a box
// and a buffer.
pub(crate) struct LazyVec<T>(Option<Box<Items<T>>>);

#[derive(Clone)]
enum Items<T> {
    One(T),
    /// Two or more, or none left after removals (freed by the next
    /// `pop_front` that finds it empty, or at once by `remove`).
    Many(Vec<T>),
}

impl<T> Items<T> {
    fn as_slice(&self) -> &[T] {
        match self {
            Items::One(item) => std::slice::from_ref(item),
            Items::Many(items) => items,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        match self {
            Items::One(item) => std::slice::from_mut(item),
            Items::Many(items) => items,
        }
    }

    fn into_vec(self) -> Vec<T> {
        match self {
            Items::One(item) => vec![item],
            Items::Many(items) => items,
        }
    }

    fn into_first(self) -> Option<T> {
        match self {
            Items::One(item) => Some(item),
            Items::Many(items) => items.into_iter().next(),
        }
    }
}

impl<T> LazyVec<T> {
    pub(crate) const fn new() -> Self {
        LazyVec(None)
    }

    pub(crate) fn push(&mut self, item: T) {
        let Some(items) = self.0.as_deref_mut() else {
            self.0 = Some(Box::new(Items::One(item)));
            return;
        };
        match items {
            Items::Many(many) => many.push(item),
            Items::One(_) => {
                let mut many = Vec::with_capacity(4);
                many.extend(std::mem::replace(items, Items::Many(Vec::new())).into_vec());
                many.push(item);
                *items = Items::Many(many);
            }
        }
    }

    /// The item at `at`, taken out. Panics when there is none (a caller's
    /// bug, as for `Vec::remove`).
    pub(crate) fn remove(&mut self, at: usize) -> T {
        self.take_at(at, Vec::remove)
    }

    /// The item at `at`, taken out, the last taking its place.
    pub(crate) fn swap_remove(&mut self, at: usize) -> T {
        self.take_at(at, Vec::swap_remove)
    }

    fn take_at(&mut self, at: usize, take: fn(&mut Vec<T>, usize) -> T) -> T {
        if let Some(Items::Many(many)) = self.0.as_deref_mut() {
            let item = take(many, at);
            if many.is_empty() {
                self.0 = None;
            }
            return item;
        }
        // One item (or none): taken with its box.
        assert_eq!(at, 0, "an item at a valid index");
        self.0
            .take()
            .and_then(|items| items.into_first())
            .expect("an item at a valid index")
    }

    /// The first item. A list of several keeps its buffer until it is
    /// found empty, so that a burst of pushes allocates once.
    pub(crate) fn pop_front(&mut self) -> Option<T> {
        if let Some(Items::Many(many)) = self.0.as_deref_mut()
            && !many.is_empty()
        {
            return Some(many.remove(0));
        }
        // One item, taken with its box; or none, and an empty buffer freed.
        self.0.take().and_then(|items| items.into_first())
    }

    pub(crate) fn take_all(&mut self) -> Vec<T> {
        self.0
            .take()
            .map(|items| items.into_vec())
            .unwrap_or_default()
    }
}

impl<T: Clone> Clone for LazyVec<T> {
    fn clone(&self) -> Self {
        LazyVec(self.0.clone())
    }
}

impl<T: fmt::Debug> fmt::Debug for LazyVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Equal when the items are, however they are held.
impl<T: PartialEq> PartialEq for LazyVec<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Eq> Eq for LazyVec<T> {}

impl<T> Default for LazyVec<T> {
    fn default() -> Self {
        LazyVec::new()
    }
}

impl<T> Deref for LazyVec<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        self.0.as_deref().map_or(&[], Items::as_slice)
    }
}

impl<T> DerefMut for LazyVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self.0.as_deref_mut() {
            Some(items) => items.as_mut_slice(),
            None => &mut [],
        }
    }
}

impl<T> FromIterator<T> for LazyVec<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        let mut list = LazyVec::new();
        list.extend(items);
        list
    }
}

impl<T> Extend<T> for LazyVec<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, items: I) {
        for item in items {
            self.push(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_costs_eight_bytes_and_no_allocation_and_empties_free_it() {
        assert_eq!(std::mem::size_of::<LazyVec<(u64, u64)>>(), 8);
        let mut list = LazyVec::new();
        assert!(list.is_empty() && list.0.is_none());
        list.push(1);
        list.push(2);
        list.push(3);
        assert_eq!(&*list, &[1, 2, 3]);
        assert_eq!(list.pop_front(), Some(1));
        assert_eq!(list.remove(1), 3);
        // Drained as a queue: kept until found empty.
        assert_eq!(list.pop_front(), Some(2));
        assert!(list.0.is_some());
        assert_eq!(list.pop_front(), None);
        assert!(list.0.is_none());
        list.extend([2, 3, 4]);
        assert_eq!(list.swap_remove(0), 2);
        assert_eq!(&*list, &[4, 3]);
        assert_eq!(list.remove(1), 3);
        list[0] = 7;
        assert_eq!(list.remove(0), 7);
        // Emptied: the buffer is given back.
        assert!(list.0.is_none());
        assert_eq!(list.pop_front(), None);
        list.extend([5, 6]);
        assert_eq!(list.take_all(), vec![5, 6]);
        assert!(list.0.is_none());
        let evens: LazyVec<i32> = (0..6).filter(|n| n % 2 == 0).collect();
        assert_eq!(&*evens, &[0, 2, 4]);
        let none: LazyVec<i32> = std::iter::empty().collect();
        assert!(none.0.is_none());
    }

    #[test]
    fn one_item_lives_in_the_box_and_lists_compare_by_their_items() {
        let mut list = LazyVec::new();
        list.push("a");
        assert!(matches!(list.0.as_deref(), Some(Items::One("a"))));
        assert_eq!(list.pop_front(), Some("a"));
        // Taking the only item frees the box at once.
        assert!(list.0.is_none());
        list.push("b");
        assert_eq!(list.remove(0), "b");
        assert!(list.0.is_none());
        list.push("c");
        list[0] = "d";
        assert_eq!(list.swap_remove(0), "d");
        assert!(list.0.is_none());
        // A second item moves both into a buffer, in order.
        list.push("e");
        list.push("f");
        assert_eq!(&*list, &["e", "f"]);
        let mut other: LazyVec<&str> = ["e", "f"].into_iter().collect();
        assert_eq!(list, other);
        assert_eq!(other.pop_front(), Some("e"));
        assert_ne!(list, other);
        assert_eq!(format!("{other:?}"), r#"["f"]"#);
        assert_eq!(list.clone().take_all(), vec!["e", "f"]);
        let mut single: LazyVec<&str> = LazyVec::new();
        single.push("f");
        assert_eq!(single, other);
        assert_eq!(single.take_all(), vec!["f"]);
    }
}
