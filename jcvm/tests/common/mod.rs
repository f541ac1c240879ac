//! Shared helpers of the VM's tests: an in-memory store with a transaction journal, and a
//! machine over a real CAP file.

#![allow(dead_code)]

use kagi_cap::CapFile;
use kagi_jcvm::{Answer, ApduIn, Limits, Package, Persist, StoreFail, Vm};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Persistent memory in a map, with a journal for transactions and a write counter.
#[derive(Default, Clone)]
pub struct Mem {
    /// Committed records.
    pub data: BTreeMap<String, Vec<u8>>,
    /// The open transaction's writes.
    pub journal: Option<BTreeMap<String, Vec<u8>>>,
    /// Writes so far.
    pub writes: u64,
    /// Power is cut at this write (counted in `writes`, 1-based): it and every later write
    /// fail with `Torn` until [`Mem::power_up`].
    pub tear_at: Option<u64>,
    /// Whether power was cut.
    pub torn: bool,
}

impl Mem {
    fn cycle(&mut self) -> Result<(), StoreFail> {
        if self.torn {
            return Err(StoreFail::Torn);
        }
        self.writes += 1;
        if self.tear_at == Some(self.writes) {
            self.torn = true;
            return Err(StoreFail::Torn);
        }
        Ok(())
    }

    /// Power comes back: the open transaction's journal is lost, writing works again.
    pub fn power_up(&mut self) {
        self.journal = None;
        self.torn = false;
        self.tear_at = None;
    }
}

impl Persist for Mem {
    fn get(&self, name: &str) -> Option<Vec<u8>> {
        self.journal
            .as_ref()
            .and_then(|j| j.get(name))
            .or_else(|| self.data.get(name))
            .cloned()
    }
    fn put(&mut self, name: &str, value: &[u8]) -> Result<(), StoreFail> {
        self.cycle()?;
        match &mut self.journal {
            Some(j) => j.insert(name.into(), value.to_vec()),
            None => self.data.insert(name.into(), value.to_vec()),
        };
        Ok(())
    }
    fn get_committed(&self, name: &str) -> Option<Vec<u8>> {
        self.data.get(name).cloned()
    }
    fn put_outside(&mut self, name: &str, value: &[u8]) -> Result<(), StoreFail> {
        self.cycle()?;
        self.data.insert(name.into(), value.to_vec());
        Ok(())
    }
    fn remove(&mut self, name: &str) -> Result<(), StoreFail> {
        self.cycle()?;
        self.data.remove(name);
        if let Some(j) = &mut self.journal {
            j.remove(name);
        }
        Ok(())
    }
    fn names(&self, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .data
            .keys()
            .chain(self.journal.iter().flat_map(|j| j.keys()))
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        v.sort();
        v.dedup();
        v
    }
    fn begin(&mut self) {
        self.journal.get_or_insert_with(BTreeMap::new);
    }
    fn commit(&mut self) -> Result<(), StoreFail> {
        if self.journal.as_ref().is_some_and(|j| !j.is_empty()) {
            self.cycle()?;
        }
        if let Some(j) = self.journal.take() {
            self.data.extend(j);
        }
        Ok(())
    }
    fn abort(&mut self) {
        self.journal = None;
    }
    fn in_transaction(&self) -> bool {
        self.journal.is_some()
    }
}

/// A CAP file of this crate.
pub fn cap(rel: &str) -> CapFile {
    CapFile::from_path(&Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// A CAP file of this crate, linked.
pub fn link(rel: &str) -> Arc<Package> {
    Arc::new(Package::link(&cap(rel)).unwrap())
}

/// The GP install parameters for instance `aid` with application data `data`.
pub fn params(aid: &[u8], data: &[u8]) -> Vec<u8> {
    let mut v = vec![aid.len() as u8];
    v.extend_from_slice(aid);
    v.extend_from_slice(&[1, 0, data.len() as u8]);
    v.extend_from_slice(data);
    v
}

/// A machine with its applet installed.
pub fn installed(rel: &str, limits: Limits) -> (Vm, Mem, Arc<Package>) {
    let c = cap(rel);
    let pkg = link(rel);
    let aid = c.applets()[0].aid.clone();
    let mut vm = Vm::new(pkg.clone(), &aid, limits);
    let mut mem = Mem::default();
    let a = vm.install(
        &mut mem,
        c.applets()[0].install_method_offset,
        &params(&aid, &[]),
    );
    assert_eq!(a, Answer::Ok(vec![]), "install: {:?}", vm.last_error());
    (vm, mem, pkg)
}

/// A short command.
pub fn cmd(hdr: [u8; 4], data: &[u8], ne: usize) -> ApduIn {
    ApduIn {
        header: hdr,
        data: data.to_vec(),
        ne,
        extended: false,
    }
}

/// SELECT by AID.
pub fn select_cmd(aid: &[u8]) -> ApduIn {
    cmd([0, 0xA4, 4, 0], aid, 256)
}
