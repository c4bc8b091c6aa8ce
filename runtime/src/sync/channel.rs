//! An unbounded multi-producer, single-consumer channel.
//!
//! `recv` parks a task (a voluntary yield point) or blocks an OS thread while the channel is
//! empty. It returns `Err(RecvError)` once the channel is empty and every `Sender` is gone.
//! `send` never blocks; it fails with the message once the `Receiver` is gone.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{RecvError, SendError, TryRecvError};
use crate::sched::waiter::{self, Waiter};

struct ChannelState<T> {
    queue: VecDeque<T>,
    senders: usize,
    receiver_alive: bool,
    /// The receiver, while it waits.
    waiter: Option<Waiter>,
}

struct Chan<T> {
    state: Mutex<ChannelState<T>>,
}

impl<T> Chan<T> {
    fn lock(&self) -> MutexGuard<'_, ChannelState<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Creates an unbounded channel.
pub fn channel<T: Send>() -> (Sender<T>, Receiver<T>) {
    let chan = Arc::new(Chan {
        state: Mutex::new(ChannelState {
            queue: VecDeque::new(),
            senders: 1,
            receiver_alive: true,
            waiter: None,
        }),
    });
    (Sender { chan: chan.clone() }, Receiver { chan })
}

/// The sending half; clone it for more producers.
pub struct Sender<T> {
    chan: Arc<Chan<T>>,
}

/// The receiving half (one consumer).
pub struct Receiver<T> {
    chan: Arc<Chan<T>>,
}

impl<T> Sender<T> {
    /// Queues `value`; wakes the receiver if it waits. Fails if the receiver was dropped.
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        let waiter = {
            let mut s = self.chan.lock();
            if !s.receiver_alive {
                return Err(SendError(value));
            }
            s.queue.push_back(value);
            s.waiter.take()
        };
        if let Some(w) = waiter {
            w.wake();
        }
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.chan.lock().senders += 1;
        Sender {
            chan: self.chan.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waiter = {
            let mut s = self.chan.lock();
            s.senders -= 1;
            if s.senders == 0 {
                s.waiter.take()
            } else {
                None
            }
        };
        if let Some(w) = waiter {
            w.wake();
        }
    }
}

impl<T> Receiver<T> {
    /// Takes the next message, waiting while the channel is empty and senders remain.
    pub fn recv(&self) -> Result<T, RecvError> {
        loop {
            {
                let mut s = self.chan.lock();
                if let Some(v) = s.queue.pop_front() {
                    return Ok(v);
                }
                if s.senders == 0 {
                    return Err(RecvError);
                }
                s.waiter = Some(waiter::current());
            }
            waiter::park();
        }
    }

    /// Takes the next message if there is one, without waiting.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let mut s = self.chan.lock();
        match s.queue.pop_front() {
            Some(v) => Ok(v),
            None if s.senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// An iterator over messages that ends when the channel is disconnected.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(move || self.recv().ok())
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut s = self.chan.lock();
        s.receiver_alive = false;
        s.waiter = None;
        // Drop queued messages outside the lock.
        let queued = std::mem::take(&mut s.queue);
        drop(s);
        drop(queued);
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sender { .. }")
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Receiver { .. }")
    }
}
