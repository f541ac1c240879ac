//! Runs the custom applet on a simulated card: load and install it under SCP03, select it,
//! count, cut power in the middle of an INCREMENT, and show that the transaction rolled back.

use applet_sim::{SimCard, SimConfig};
use card_wire::{Command, Transport};
use kagi_example_custom_applet as counter;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = SimConfig::default();
    let isd = config.isd.aid.as_bytes().to_vec();
    let keys = config.isd.keys[0].clone();
    let mut card = SimCard::with_classes(config, counter::classes()?.shared());
    card.power_on();
    counter::host::load_and_install(&mut card, &isd, keys, 5)?;
    let fci = counter::host::select(&mut card, &counter::INSTANCE)?;
    println!("SELECT → {}", hex::encode_upper(fci.to_bytes()));
    let inc = Command::new(0x80, counter::INS_INCREMENT, 0, 0);
    let read = Command::new(0x80, counter::INS_READ, 0, 0).with_le(8)?;
    for _ in 0..2 {
        counter::host::send(&mut card, &inc)?;
    }
    let r = counter::host::send(&mut card, &read)?;
    println!(
        "READ after two INCREMENTs → {}",
        hex::encode_upper(r.to_bytes())
    );
    card.tear_at(2);
    let torn = card.transmit(&inc.to_bytes());
    println!("INCREMENT with power cut at its 2nd write → {torn:?}");
    card.power_on();
    counter::host::select(&mut card, &counter::INSTANCE)?;
    let r = counter::host::send(&mut card, &read)?;
    println!("READ after power-up → {}", hex::encode_upper(r.to_bytes()));
    Ok(())
}
