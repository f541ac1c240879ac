//! # A custom applet for kagi's simulator
//!
//! [`Counter`] is an applet written outside `applet-sim`: a counter that adds a step fixed at
//! install time, with a label. It shows what an applet author needs:
//!
//! - [`register`] adds the class `acme.counter` to a [`ClassTable`]; a card made with that
//!   table ([`applet_sim::SimCard::with_classes`]) accepts a load file naming the class.
//! - The constructor reads the install parameters (`C9 { 80 01 step }`) and refuses bad
//!   ones with `6A80`, so INSTALL [for install] fails as a Java Card `install` method that
//!   throws would.
//! - Persistent state goes through `ctx.store`, scoped to the instance's own AID.
//! - [`host`] loads and installs it through the issuer security domain under SCP03 with
//!   nothing but `card-wire`'s host half.
//!
//! ## The applet's commands (CLA `80`)
//!
//! | command | answer |
//! |---|---|
//! | SELECT | `"ACME-CTR"` ‖ version `01` ‖ step (1 byte), `9000` |
//! | `80 02 00 00` INCREMENT | `9000`; value and operation count change in one transaction |
//! | `80 04 00 00 08` READ | value (4 bytes, big-endian) ‖ operations (4 bytes), `9000` |
//! | `80 06 00 00 Lc label` SET LABEL | `9000`; one persistent write (atomic on its own) |
//! | `80 08 00 00 00` GET LABEL | the label, `9000`; `6A88` before one is set |
//!
//! The counter starts at value 0, operations 0. INCREMENT writes the value and the operation
//! count inside one transaction: power lost at any of its persistent writes (two journaled
//! writes and the commit record) leaves both old values; a value past `FFFFFFFF` is refused
//! with `6A84`.

#![forbid(unsafe_code)]

pub mod host;

use applet_sim::{Applet, AppletContext, ClassError, ClassTable, Install};
use card_wire::{Command, Response, StatusWord};

/// The class name the load file names.
pub const CLASS: &str = "acme.counter";
/// The package (executable load file) AID.
pub const PACKAGE: [u8; 7] = [0xF0, 0x41, 0x43, 0x4D, 0x45, 0x00, 0x01];
/// The module (applet class) AID.
pub const MODULE: [u8; 8] = [0xF0, 0x41, 0x43, 0x4D, 0x45, 0x00, 0x01, 0x01];
/// The instance AID the demo installs.
pub const INSTANCE: [u8; 9] = [0xF0, 0x41, 0x43, 0x4D, 0x45, 0x00, 0x01, 0x01, 0x01];

/// INCREMENT.
pub const INS_INCREMENT: u8 = 0x02;
/// READ.
pub const INS_READ: u8 = 0x04;
/// SET LABEL.
pub const INS_SET_LABEL: u8 = 0x06;
/// GET LABEL.
pub const INS_GET_LABEL: u8 = 0x08;
/// Longest label.
pub const MAX_LABEL: usize = 32;

/// The counter applet. Its only transient state is the step, from the install parameters.
#[derive(Debug)]
pub struct Counter {
    step: u32,
}

/// The install parameters for `step`: `C9 03 80 01 step`.
pub fn install_params(step: u8) -> Vec<u8> {
    vec![0xC9, 0x03, 0x80, 0x01, step]
}

impl Counter {
    /// The applet for `install`: its parameters must be `C9 { 80 01 step }` with a step of
    /// 1 to 255, or empty (step 1).
    pub fn new(install: &Install<'_>) -> Result<Self, StatusWord> {
        let step = match install.params {
            [] | [0xC9, 0x00] => 1,
            [0xC9, 0x03, 0x80, 0x01, step] if *step > 0 => *step,
            _ => return Err(StatusWord::INCORRECT_DATA),
        };
        Ok(Counter {
            step: u32::from(step),
        })
    }

    fn read_u32(ctx: &AppletContext<'_>, name: &str) -> u32 {
        ctx.store
            .get(name)
            .and_then(|v| <[u8; 4]>::try_from(v).ok())
            .map(u32::from_be_bytes)
            .unwrap_or(0)
    }
}

/// Registers `acme.counter` in `table`.
pub fn register(table: &mut ClassTable) -> Result<(), ClassError> {
    table.register(CLASS, |install| {
        Ok(Box::new(Counter::new(install)?) as Box<dyn Applet>)
    })
}

/// The stock classes and `acme.counter`.
pub fn classes() -> Result<ClassTable, ClassError> {
    let mut table = applet_sim::stock::classes();
    register(&mut table)?;
    Ok(table)
}

impl Applet for Counter {
    fn select(&mut self, _ctx: &mut AppletContext<'_>) -> Result<Vec<u8>, StatusWord> {
        let mut fci = b"ACME-CTR".to_vec();
        fci.push(0x01);
        fci.push(self.step as u8);
        Ok(fci)
    }

    fn process(
        &mut self,
        cmd: &Command,
        ctx: &mut AppletContext<'_>,
    ) -> Result<Response, StatusWord> {
        if !cmd.class().is_proprietary() {
            return Err(StatusWord::CLA_NOT_SUPPORTED);
        }
        match cmd.ins() {
            INS_INCREMENT => {
                let value = Self::read_u32(ctx, "value")
                    .checked_add(self.step)
                    .ok_or(StatusWord::NOT_ENOUGH_MEMORY)?;
                let ops = Self::read_u32(ctx, "ops").wrapping_add(1);
                ctx.store.atomically(|s| {
                    s.put("value", &value.to_be_bytes())?;
                    s.put("ops", &ops.to_be_bytes())
                })?;
                Ok(Response::status(StatusWord::SUCCESS))
            }
            INS_READ => {
                let mut out = Self::read_u32(ctx, "value").to_be_bytes().to_vec();
                out.extend_from_slice(&Self::read_u32(ctx, "ops").to_be_bytes());
                Ok(Response::success(out))
            }
            INS_SET_LABEL => {
                if cmd.data().is_empty() || cmd.data().len() > MAX_LABEL {
                    return Err(StatusWord::WRONG_LENGTH);
                }
                ctx.store.put("label", cmd.data())?;
                Ok(Response::status(StatusWord::SUCCESS))
            }
            INS_GET_LABEL => ctx
                .store
                .get("label")
                .map(Response::success)
                .ok_or(StatusWord::REFERENCED_DATA_NOT_FOUND),
            _ => Err(StatusWord::INS_NOT_SUPPORTED),
        }
    }
}
