//! A vector of 8 bytes that allocates nothing while empty: for the lists a
//! refresher keeps (effects waiting, leases held, refresh tokens spent),
//! which are empty for most keys most of the time. A pool holds a refresher
//! per key, so each `Vec` (24 bytes) or `VecDeque` (32) counted.

use std::ops::{Deref, DerefMut};

/// A `Vec` behind an optional box: 8 bytes, nothing allocated while empty,
/// and its memory given back whenever it empties.
#[derive(Debug, Clone, PartialEq, Eq)]
// The box is the point: 8 bytes in place of 24, and one allocation more
// only while the list holds anything.
#[allow(clippy::box_collection)]
pub(crate) struct LazyVec<T>(Option<Box<Vec<T>>>);

impl<T> LazyVec<T> {
    pub(crate) const fn new() -> Self {
        LazyVec(None)
    }

    pub(crate) fn push(&mut self, item: T) {
        self.0.get_or_insert_with(Box::default).push(item);
    }

    /// Removes and returns the item at `at`, keeping the order.
    ///
    /// Panics if `at` is out of bounds, as `Vec::remove` does.
    pub(crate) fn remove(&mut self, at: usize) -> T {
        let items = self.0.as_mut().expect("an item at a valid index");
        let item = items.remove(at);
        self.free_if_empty();
        item
    }

    /// Removes and returns the item at `at`, moving the last one there.
    pub(crate) fn swap_remove(&mut self, at: usize) -> T {
        let items = self.0.as_mut().expect("an item at a valid index");
        let item = items.swap_remove(at);
        self.free_if_empty();
        item
    }

    /// The first item, removed. A queue's buffer is kept while it is being
    /// drained and given back when it is found empty, so a burst of pushes
    /// and pops allocates once.
    pub(crate) fn pop_front(&mut self) -> Option<T> {
        match self.0.as_mut() {
            Some(items) if !items.is_empty() => Some(items.remove(0)),
            _ => {
                self.0 = None;
                None
            }
        }
    }

    /// Every item, leaving it empty.
    pub(crate) fn take_all(&mut self) -> Vec<T> {
        self.0.take().map(|items| *items).unwrap_or_default()
    }

    fn free_if_empty(&mut self) {
        if self.0.as_ref().is_some_and(|items| items.is_empty()) {
            self.0 = None;
        }
    }
}

impl<T> Default for LazyVec<T> {
    fn default() -> Self {
        LazyVec::new()
    }
}

impl<T> Deref for LazyVec<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
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
        let items: Vec<T> = items.into_iter().collect();
        if items.is_empty() {
            LazyVec(None)
        } else {
            LazyVec(Some(Box::new(items)))
        }
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
}
