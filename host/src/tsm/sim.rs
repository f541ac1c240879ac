//! Simulated SIMs as a TSM finds them in the field: a UICC whose issuer (the operator) created
//! a supplementary security domain for a service provider and gave it keys diversified from
//! the provider's master key set — what `kagi perso` does with a `[[domain]]` entry, here in
//! one call for tests, demos and load generators.

use crate::channel::CardChannel;
use crate::error::{Error, Result};
use crate::gp::{self, manage};
use crate::secure::SecureChannel;
use applet_sim::card::{SSD_MODULE, SSD_PACKAGE};
use applet_sim::{SimCard, SimConfig};
use card_wire::scp03::{
    CardKeys, Diversification, DiversifiedMaster, HostOptions, SecurityLevel, StaticKeys,
};

/// The provider security domain's AID in kagi's examples.
pub const PROVIDER_SD: [u8; 9] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x53, 0x50, 0x50, 0x01];

/// A SIM for the TSM: its card image number (hex) and the card.
pub struct ProvisionedSim {
    /// The card.
    pub card: SimCard,
    /// GET DATA `45`, hex upper-case.
    pub cin: String,
    /// The ICCID.
    pub iccid: String,
}

/// The keys a provider's domain gets on every card: `master` diversified with `kdf3`, with
/// key version `kvn`.
pub fn provider_keys(master: StaticKeys, kvn: u8) -> DiversifiedMaster {
    DiversifiedMaster {
        master,
        scheme: Diversification::Kdf3,
        kvn,
    }
}

fn full(kvn: u8) -> HostOptions {
    HostOptions {
        kvn,
        level: SecurityLevel::FULL,
        ..HostOptions::default()
    }
}

/// A fresh UICC (`serial` makes its identity) with the GP test keys on its issuer domain and
/// no provider domain yet (the operator creates it over the air).
pub fn blank(serial: &[u8]) -> Result<ProvisionedSim> {
    let (ch, _, cin, iccid) = fresh(serial)?;
    Ok(ProvisionedSim {
        card: ch.into_transport(),
        cin,
        iccid,
    })
}

/// A powered fresh UICC with the issuer domain selected: the channel, the ISD's AID, its card
/// image number and ICCID.
fn fresh(serial: &[u8]) -> Result<(CardChannel<SimCard>, Vec<u8>, String, String)> {
    let config = SimConfig::preset("uicc")
        .map_err(Error::Protocol)?
        .with_serial(serial);
    let iccid = config
        .iccid
        .as_ref()
        .map(|i| i.to_string())
        .unwrap_or_default();
    let mut ch = CardChannel::new(SimCard::powered(config));
    let isd = gp::select_domain(&mut ch, None)?;
    let cin = gp::card_image_number(&mut ch)?.unwrap_or_default();
    Ok((ch, isd.aid, cin, iccid))
}

/// A fresh UICC (`serial` makes its identity) with the GP test keys on its issuer domain, and
/// the provider domain `sd` (Security Domain + Authorized Management) whose initial keys are
/// replaced by `keys` for this card.
pub fn provision(serial: &[u8], sd: &[u8], keys: &DiversifiedMaster) -> Result<ProvisionedSim> {
    let (mut ch, isd, cin, iccid) = fresh(serial)?;
    let test_keys = StaticKeys::default_test_keys(0x30);
    {
        let mut sc = SecureChannel::open(&mut ch, test_keys.clone(), full(0x30), Some(&isd))?;
        manage::install(
            &mut sc,
            &manage::InstallSpec {
                package: SSD_PACKAGE.to_vec(),
                module: SSD_MODULE.to_vec(),
                instance: sd.to_vec(),
                privileges: vec![0x80, 0x40, 0x00],
                params: Vec::new(),
                selectable: true,
            },
        )?;
    }
    gp::select(&mut ch, sd)?;
    let mut sc = SecureChannel::open(&mut ch, test_keys, full(0x30), Some(sd))?;
    let kdd = sc.info().init_update.kdd;
    let new = keys.for_card(&kdd)?;
    let dek = sc.dek()?.clone();
    manage::put_key(&mut sc, &dek, &new, Some(0x30))?;
    drop(sc);
    Ok(ProvisionedSim {
        card: ch.into_transport(),
        cin,
        iccid,
    })
}
