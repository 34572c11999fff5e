//! Prints the worked example of docs/protocol.md: key, canonical bytes and signatures.

use gridmesh_protocol::example::{
    example_attestation, example_envelope, example_key, example_order, example_reading,
};
use gridmesh_protocol::signing::SignedEnvelope;

fn main() {
    let key = example_key();
    println!("seed:       {}", hex::encode(key.seed()));
    println!(
        "public key: {} (base64 {})",
        hex::encode(key.public_key().0),
        key.public_key()
    );
    let order = SignedEnvelope::sign(&example_order(), &key);
    println!(
        "\norder bytes ({}):\n{}",
        order.payload.len(),
        hex::encode(&order.payload)
    );
    println!("order signature:\n{}", hex::encode(order.signature));
    println!(
        "order envelope:\n{}",
        serde_json::to_string_pretty(&order).unwrap()
    );
    let reading = SignedEnvelope::sign(&example_reading(), &key);
    println!(
        "\nreading bytes ({}):\n{}",
        reading.payload.len(),
        hex::encode(&reading.payload)
    );
    println!("reading signature:\n{}", hex::encode(reading.signature));
    println!("reading sha256: {}", reading.digest_hex());
    let envelope = SignedEnvelope::sign(&example_envelope(), &key);
    println!(
        "\nenvelope bytes ({}):\n{}",
        envelope.payload.len(),
        hex::encode(&envelope.payload)
    );
    println!("envelope signature:\n{}", hex::encode(envelope.signature));
    let attestation = SignedEnvelope::sign(&example_attestation(), &key);
    println!(
        "\nresult attestation bytes ({}):\n{}",
        attestation.payload.len(),
        hex::encode(&attestation.payload)
    );
    println!(
        "result attestation signature:\n{}",
        hex::encode(attestation.signature)
    );
}
