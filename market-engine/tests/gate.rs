//! Automatic clearing at gate closure on an accelerated clock: the result arrives on SSE, on
//! REST and retained on MQTT (Mosquitto at 127.0.0.1:1883) as a result signed by the market,
//! the enrolled gateway's signed operating envelope is retained on its envelope topic, and
//! later orders are refused.

use chrono::{DateTime, Utc};
use gridmesh_protocol::api::market::PublicResult;
use gridmesh_protocol::envelope::{EnvelopeBasis, MarketKey, OperatingEnvelope, SignedResult};
use gridmesh_protocol::grid::{Network, UtilityTariff};
use gridmesh_protocol::keys::SigningKeyPair;
use gridmesh_protocol::market::IntervalResult;
use gridmesh_protocol::order::Order;
use gridmesh_protocol::registry::{GatewayEnrollment, Participant, ParticipantKind};
use gridmesh_protocol::{
    GatewayId, Interval, NodeId, ParticipantId, PricePerMwh, Side, SignedEnvelope, Wh, ZoneId,
};
use gridmesh_runtime::clock::Clock;
use gridmesh_runtime::shutdown::Shutdown;
use market_engine::{MarketConfig, serve};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clears_at_gate_closure_and_publishes_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let zone = format!("gate{}", std::process::id());
    let epoch = DateTime::parse_from_rfc3339("2026-06-21T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    // 300× real time: the 12:15 interval's gate closes at 12:10, two real seconds from now.
    let clock = Clock::scaled(epoch, 300.0);
    let shutdown = Shutdown::new();
    let config = MarketConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", dir.path().join("m.db").display()),
        zone: zone.clone(),
        operator_token: Some("op".into()),
        broker_url: Some("mqtt://127.0.0.1:1883".into()),
        topology: Some(Network {
            root: NodeId::new("sub").unwrap(),
            branches: vec![],
            utility: UtilityTariff {
                envelope_excess_price: Default::default(),
                retail_price: Some(PricePerMwh(30_000)),
                feed_in_price: Some(PricePerMwh(8_000)),
                ..Default::default()
            },
        }),
        ..MarketConfig::default()
    };
    let m = serve(config, clock.clone(), shutdown.clone())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let key = SigningKeyPair::from_seed([5; 32]);
    let alice = Participant {
        id: ParticipantId::new("alice").unwrap(),
        public_key: key.public_key(),
        node: NodeId::new("sub").unwrap(),
        kind: ParticipantKind::Household,
    };
    let r = http
        .post(format!("{}/participants", m.url()))
        .bearer_auth("op")
        .json(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Alice's gateway (named per process: envelope topics are not per zone).
    let gateway = GatewayId::new(format!("gw-gate{}", std::process::id())).unwrap();
    let r = http
        .post(format!("{}/gateways", m.url()))
        .bearer_auth("op")
        .json(&GatewayEnrollment {
            gateway: gateway.clone(),
            participant: alice.id.clone(),
            node: alice.node.clone(),
            public_key: key.public_key(),
            inverter_w: 4_000,
            battery_w: 0,
            latitude_microdeg: 0,
            longitude_microdeg: 0,
        })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let market_key: MarketKey = http
        .get(format!("{}/market-key", m.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(market_key.public_key, m.market_key);

    // Follow the SSE stream before the gate closes.
    let mut events = http
        .get(format!("{}/events", m.url()))
        .bearer_auth("op")
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);

    let interval = Interval::parse("2026-06-21T12:15:00Z", 15).unwrap();
    let order = Order {
        zone: Some(ZoneId::new(&zone).unwrap()),
        participant: alice.id.clone(),
        node: alice.node.clone(),
        interval,
        side: Side::Buy,
        quantity: Wh(2_000),
        limit_price: PricePerMwh(35_000),
        nonce: 1,
    };
    let r = http
        .post(format!("{}/orders", m.url()))
        .json(&SignedEnvelope::sign(&order, &key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !text.contains("\n\n") || !text.contains("event: result") {
        let chunk = tokio::time::timeout_at(deadline, events.chunk())
            .await
            .expect("a result event before the deadline")
            .unwrap()
            .expect("stream open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("data line");
    let from_sse: IntervalResult = serde_json::from_str(data).unwrap();
    assert_eq!(from_sse.interval, interval);
    assert_eq!(from_sse.orders[0].cleared, Wh(2_000));
    assert_eq!(from_sse.utility_import, Wh(2_000));
    assert!(clock.now() >= interval.gate_closure(chrono::Duration::minutes(5)));

    let from_rest: IntervalResult = http
        .get(format!("{}/intervals/2026-06-21T12:15:00Z/result", m.url()))
        .bearer_auth("op")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(from_rest, from_sse);

    let late = Order { nonce: 2, ..order };
    let r = http
        .post(format!("{}/orders", m.url()))
        .json(&SignedEnvelope::sign(&late, &key))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);

    // The retained MQTT copies: wait for the broker's PUBACK of the publish, then subscribe.
    let published = tokio::time::timeout(Duration::from_secs(20), async {
        while m
            .market
            .metrics
            .results_published
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        published.is_ok(),
        "the result was never acknowledged by the broker"
    );
    let topic = gridmesh_protocol::topics::result(&zone, &interval);
    let envelope_topic = gridmesh_protocol::topics::envelope(&gateway);
    let mut options = rumqttc::MqttOptions::new(format!("check-{zone}"), "127.0.0.1", 1883);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    for t in [&topic, &envelope_topic] {
        client
            .subscribe(t.clone(), rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
    }
    let (from_mqtt, envelope) = tokio::time::timeout(Duration::from_secs(20), async {
        let (mut result, mut envelope) = (None, None);
        while result.is_none() || envelope.is_none() {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) =
                eventloop.poll().await.unwrap()
            {
                assert!(p.retain);
                if p.topic == topic {
                    result = Some(p.payload.to_vec());
                } else {
                    envelope = Some(serde_json::from_slice::<SignedEnvelope>(&p.payload).unwrap());
                }
            }
        }
        (result.unwrap(), envelope.unwrap())
    })
    .await
    .expect("a retained signed result and envelope on MQTT");
    // The result on MQTT is the public view of the result everyone else saw: aggregates and
    // pseudonyms, no household or gateway id (every gateway may read the topic).
    let public: PublicResult = serde_json::from_slice(&from_mqtt).unwrap();
    assert_eq!(public.interval, from_sse.interval);
    assert_eq!(public.zone, from_sse.zone);
    let text = String::from_utf8(from_mqtt).unwrap();
    for order in &from_sse.orders {
        assert!(
            !text.contains(order.participant.as_str()),
            "the public result on MQTT names {}: {text}",
            order.participant
        );
    }
    assert!(
        !text.contains(gateway.as_str()),
        "the public result on MQTT names gateway {gateway}: {text}"
    );
    // The envelope verifies with the same key, names the gateway and carries the allocation of
    // the result it names (on a slow machine the next interval may already be cleared: the
    // retained envelope is always the latest).
    let envelope: OperatingEnvelope = envelope.open_by(&market_key.public_key).unwrap();
    assert_eq!(envelope.gateway, gateway);
    assert!(envelope.interval == interval || envelope.interval == interval.next());
    assert_eq!(envelope.zone, zone);
    assert_eq!(envelope.basis, EnvelopeBasis::Cleared);
    let signed: SignedResult = http
        .get(format!(
            "{}/intervals/{}/result/signed",
            m.url(),
            envelope.interval.start().format("%Y-%m-%dT%H:%M:%SZ")
        ))
        .bearer_auth("op")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(envelope.result_digest, signed.body_digest());
    let its_result = signed.open(&market_key.public_key).unwrap();
    assert_eq!(its_result.envelopes.len(), 1);
    let allocation = &its_result.envelopes[0];
    assert_eq!(envelope.export_limit, allocation.export_limit_wh);
    assert_eq!(envelope.import_limit, allocation.import_limit_wh);
    assert_eq!(from_sse.envelopes.len(), 1);
    assert_eq!(from_sse.envelopes[0].cleared_import_wh, Wh(2_000));
    // 4 kW inverter over 15 minutes; 2 000 Wh cleared purchase inside an 11 kW connection.
    assert_eq!(envelope.export_limit, Wh(1_000));
    assert_eq!(envelope.import_limit, Wh(2_750));
    assert!(
        m.market
            .metrics
            .envelopes_published
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    // Clean up the retained messages so reruns start fresh.
    for t in [topic, envelope_topic] {
        client
            .publish(t, rumqttc::QoS::AtLeastOnce, true, Vec::<u8>::new())
            .await
            .unwrap();
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut acks = 0;
        while acks < 2 {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = eventloop.poll().await
            {
                acks += 1;
            }
        }
    })
    .await;
    drop(events);
    shutdown.stop().await;
}
