//! Opens an SCP03 session (level 33: C-MAC, C-DEC, R-MAC, R-ENC) with the issuer security
//! domain of a simulated card and lists its applications, with only the `kagi` library.

use kagi::card_wire::scp03::{HostOptions, SecurityLevel, StaticKeys};
use kagi::channel::CardChannel;
use kagi::gp::{self, StatusScope};
use kagi::secure::SecureChannel;
use kagi::sim::{SimCard, SimConfig};

fn main() -> Result<(), kagi::Error> {
    // A powered simulated card with the GlobalPlatform test keys (40..4F, key version 30).
    let card = SimCard::powered(SimConfig::default());
    let mut channel = CardChannel::new(card);

    // SELECT the issuer security domain and open the secure channel.
    let isd = gp::select_domain(&mut channel, None)?;
    let options = HostOptions {
        level: SecurityLevel::FULL,
        ..HostOptions::default()
    };
    let keys = StaticKeys::default_test_keys(0x30);
    let mut session = SecureChannel::open(&mut channel, keys, options, Some(&isd.aid))?;

    // GET STATUS for the applications (and security domains) on the card.
    let apps = gp::get_status(&mut session, StatusScope::Applications)?;
    println!("{} applications:", apps.len());
    for app in &apps {
        println!(
            "  {}  life cycle {:02X}  privileges {}",
            hex(&app.aid),
            app.life_cycle,
            hex(&app.privileges)
        );
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}
