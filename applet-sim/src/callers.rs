//! The contexts whose calls are under way, for calls back into them.
//!
//! A shareable call runs in the server's context while the client's call waits (Java Card
//! 3.0.5 runtime environment specification §6.2.5: each call switches context and returns to
//! the caller's). The server may call a shareable object of a context whose call is under way
//! — a callback to its client, or an object the client handed over —, which then runs in that
//! context as a nested call. The machine of such a context is borrowed by its own call further
//! up, so the card hands each shareable call the chain of those machines ([`Callers`]), and a
//! call for one of their instances runs on that machine ([`kagi_jcvm::Vm::reenter`]).
//!
//! Nesting is bounded ([`MAX_NESTING`] contexts): a call that would go deeper is refused as
//! the firewall refuses (`SecurityException` in the caller), so two applets calling each other
//! without end get an exception, never a host stack overflow.

use kagi_jcvm::Vm;

/// How many contexts' calls may be under way at once (the context running a command and the
/// shareable calls nested in it).
pub const MAX_NESTING: usize = 8;

/// A context's machine whose call is under way, and how its instances reach memory.
pub(crate) struct Busy<'a> {
    /// The machine, suspended in its call.
    pub(crate) vm: &'a mut Vm,
    /// Its records prefix (`None`: an old-form instance's own namespace).
    pub(crate) records: Option<&'a str>,
    /// Whether its class sees the whole card's memory.
    pub(crate) privileged: bool,
    /// The contexts whose calls were under way before this one's.
    pub(crate) up: Callers<'a>,
}

/// A busy context found for a call back into it.
pub(crate) struct Found<'x> {
    /// Its machine.
    pub(crate) vm: &'x mut Vm,
    /// Its records prefix.
    pub(crate) records: Option<&'x str>,
    /// Whether its class sees the whole card's memory.
    pub(crate) privileged: bool,
}

/// What a callback does with the busy context it found and the other busy contexts.
pub(crate) type Visit<'f> = dyn for<'x, 'y> FnMut(Found<'x>, Callers<'y>) + 'f;

/// The chain of busy contexts, innermost first.
pub(crate) trait Chain {
    /// Calls `f` with the context that serves instance `owner` and the chain without it;
    /// `false` when no busy context serves it.
    fn find(&mut self, owner: &[u8], f: &mut Visit<'_>) -> bool;
}

impl Chain for Busy<'_> {
    fn find(&mut self, owner: &[u8], f: &mut Visit<'_>) -> bool {
        if self.vm.serves(owner) {
            let found = Found {
                vm: &mut *self.vm,
                records: self.records,
                privileged: self.privileged,
            };
            f(found, self.up.reborrow());
            return true;
        }
        let (vm, records, privileged) = (&mut *self.vm, self.records, self.privileged);
        let Some(up) = self.up.chain.as_deref_mut() else {
            return false;
        };
        // Found further up: this context stays in the chain handed on.
        up.find(owner, &mut |found, mut rest| {
            let mut me = Busy {
                vm: &mut *vm,
                records,
                privileged,
                up: rest.reborrow(),
            };
            f(found, Callers::of(&mut me));
        })
    }
}

/// The contexts whose calls are under way (none for a command's own call), as the card hands
/// them to each shareable call.
#[derive(Default)]
pub struct Callers<'a> {
    chain: Option<&'a mut (dyn Chain + 'a)>,
    /// How many calls are under way: the chain's contexts, and the calls back into them
    /// (a context called back is out of the chain while it runs, but its call still counts).
    depth: usize,
}

impl<'a> Callers<'a> {
    /// The chain whose innermost context is `busy`.
    pub(crate) fn of(busy: &'a mut Busy<'_>) -> Self {
        let depth = busy.up.depth + 1;
        let chain: &'a mut (dyn Chain + 'a) = busy;
        Callers {
            chain: Some(chain),
            depth,
        }
    }

    /// The same chain, for a shorter while.
    pub(crate) fn reborrow(&mut self) -> Callers<'_> {
        Callers {
            chain: match self.chain.as_deref_mut() {
                Some(c) => Some(c),
                None => None,
            },
            depth: self.depth,
        }
    }

    /// How many calls are under way.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Calls `f` with the busy context serving instance `owner` and the rest of the chain
    /// (whose depth still counts the call of the context found); `false` when none serves it.
    pub(crate) fn find(&mut self, owner: &[u8], f: &mut Visit<'_>) -> bool {
        let depth = self.depth;
        match self.chain.as_deref_mut() {
            Some(c) => c.find(owner, &mut |found, mut rest| {
                rest.depth = depth;
                f(found, rest)
            }),
            None => false,
        }
    }
}
