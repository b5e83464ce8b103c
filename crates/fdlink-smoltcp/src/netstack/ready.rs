//! Which connections the engine must look at: smoltcp wakes a
//! connection's waker when its socket receives data, frees send room or
//! changes state, and the waker puts the connection's index on the ready
//! list. The engine then visits only those, so ten thousand idle
//! connections cost nothing per turn.

use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

/// The indexes of the connections with something to do, in the order
/// they became ready (duplicates possible).
#[derive(Debug, Default)]
pub(crate) struct ReadyList {
    ids: Mutex<Vec<usize>>,
}

impl ReadyList {
    /// Marks connection `id` ready.
    pub(crate) fn push(&self, id: usize) {
        self.ids.lock().unwrap_or_else(|e| e.into_inner()).push(id);
    }

    /// Moves the ready indexes into `into`, once each.
    pub(crate) fn take(&self, into: &mut Vec<usize>) {
        into.append(&mut self.ids.lock().unwrap_or_else(|e| e.into_inner()));
        into.sort_unstable();
        into.dedup();
    }

    /// A waker that marks connection `id` ready.
    pub(crate) fn waker(self: &Arc<Self>, id: usize) -> Waker {
        Waker::from(Arc::new(ConnWaker {
            id,
            list: Arc::clone(self),
        }))
    }
}

struct ConnWaker {
    id: usize,
    list: Arc<ReadyList>,
}

impl Wake for ConnWaker {
    fn wake(self: Arc<Self>) {
        self.list.push(self.id);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.list.push(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_woken_connection_is_listed_once() {
        let list = Arc::new(ReadyList::default());
        let (a, b) = (list.waker(3), list.waker(1));
        a.wake_by_ref();
        b.wake_by_ref();
        a.wake();
        let mut ids = Vec::new();
        list.take(&mut ids);
        assert_eq!(ids, [1, 3]);
        ids.clear();
        list.take(&mut ids);
        assert!(ids.is_empty());
    }
}
