//! A fixed-capacity byte ring: where a connection's data waits between the
//! engine and the application, allocated once per connection and never
//! grown — its capacity is the back-pressure.

/// A ring of bytes with a fixed capacity.
#[derive(Debug)]
pub(crate) struct ByteRing {
    buf: Box<[u8]>,
    head: usize,
    len: usize,
}

impl ByteRing {
    /// An empty ring of `capacity` bytes. The memory comes zeroed from the
    /// allocator, so pages an idle connection never touches cost nothing.
    pub(crate) fn new(capacity: usize) -> Self {
        ByteRing {
            buf: vec![0u8; capacity.max(1)].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn room(&self) -> usize {
        self.buf.len() - self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends as much of `data` as fits; returns how much.
    pub(crate) fn write(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.room());
        let cap = self.buf.len();
        let tail = (self.head + self.len) % cap;
        let first = n.min(cap - tail);
        self.buf[tail..tail + first].copy_from_slice(&data[..first]);
        self.buf[..n - first].copy_from_slice(&data[first..n]);
        self.len += n;
        n
    }

    /// Takes up to `out.len()` bytes from the front; returns how many.
    pub(crate) fn read(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.len);
        let cap = self.buf.len();
        let first = n.min(cap - self.head);
        out[..first].copy_from_slice(&self.buf[self.head..self.head + first]);
        out[first..n].copy_from_slice(&self.buf[..n - first]);
        self.consume(n);
        n
    }

    /// Drops `n` bytes from the front.
    fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        self.head = (self.head + n) % self.buf.len();
        self.len -= n;
        if self.len == 0 {
            self.head = 0;
        }
    }

    /// Appends one datagram behind a two-byte length; false (nothing
    /// written) when it does not fit or is longer than 65535 bytes.
    pub(crate) fn push_datagram(&mut self, datagram: &[u8]) -> bool {
        let Ok(len) = u16::try_from(datagram.len()) else {
            return false;
        };
        if self.room() < 2 + datagram.len() {
            return false;
        }
        self.write(&len.to_be_bytes());
        self.write(datagram);
        true
    }

    /// Takes the first datagram into `out`; returns its full length (only
    /// `out.len()` bytes of a longer one are kept), `None` when empty.
    pub(crate) fn pop_datagram(&mut self, out: &mut [u8]) -> Option<usize> {
        if self.len < 2 {
            return None;
        }
        let mut len = [0u8; 2];
        self.read(&mut len);
        let len = usize::from(u16::from_be_bytes(len));
        let room = out.len();
        let kept = self.read(&mut out[..len.min(room)]);
        self.consume(len - kept);
        Some(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wraps_around_and_keeps_order() {
        let mut r = ByteRing::new(8);
        assert_eq!(r.write(b"abcdef"), 6);
        let mut out = [0u8; 4];
        assert_eq!(r.read(&mut out), 4);
        assert_eq!(&out, b"abcd");
        assert_eq!(r.write(b"ghijklmn"), 6, "only the room");
        let mut all = [0u8; 16];
        let n = r.read(&mut all);
        assert_eq!(&all[..n], b"efghijkl");
        assert!(r.is_empty());
    }

    #[test]
    fn datagrams_keep_their_boundaries() {
        let mut r = ByteRing::new(32);
        assert!(r.push_datagram(b"one"));
        assert!(r.push_datagram(b""));
        assert!(r.push_datagram(b"three33"));
        assert!(!r.push_datagram(&[0; 40]), "too big for the room");
        let mut out = [0u8; 4];
        assert_eq!(r.pop_datagram(&mut out), Some(3));
        assert_eq!(&out[..3], b"one");
        assert_eq!(r.pop_datagram(&mut out), Some(0));
        assert_eq!(r.pop_datagram(&mut out), Some(7), "full length, cut copy");
        assert_eq!(&out, b"thre");
        assert_eq!(r.pop_datagram(&mut out), None);
    }

    proptest! {
        #[test]
        fn a_ring_is_a_bounded_fifo(ops in proptest::collection::vec((any::<bool>(), 0usize..40), 0..200)) {
            let mut ring = ByteRing::new(37);
            let mut model = std::collections::VecDeque::new();
            let mut next = 0u8;
            for (write, n) in ops {
                if write {
                    let data: Vec<u8> = (0..n).map(|_| { next = next.wrapping_add(1); next }).collect();
                    let took = ring.write(&data);
                    prop_assert_eq!(took, n.min(37 - model.len()));
                    model.extend(&data[..took]);
                } else {
                    let mut out = vec![0u8; n];
                    let got = ring.read(&mut out);
                    let want: Vec<u8> = model.drain(..n.min(model.len())).collect();
                    prop_assert_eq!(&out[..got], &want[..]);
                }
                prop_assert_eq!(ring.len(), model.len());
            }
        }
    }
}
