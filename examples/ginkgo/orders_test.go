package checkout_test

import (
	"context"
	"fmt"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/twmb/franz-go/pkg/kgo"
)

// A Kafka topic with a fixed name: every process produces to "orders" and must read back its
// own records only.
var _ = Describe("orders on a Kafka topic with a fixed name", func() {
	const topic = "orders"

	It("reads back exactly the orders this process published", func(ctx SpecContext) {
		client, err := kgo.NewClient(
			kgo.SeedBrokers(strings.Split(kafkaBrokers, ",")...),
			kgo.AllowAutoTopicCreation(),
			kgo.ConsumeTopics(topic),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(client.Close)

		var sent []*kgo.Record
		for i := 1; i <= 5; i++ {
			sent = append(sent, &kgo.Record{Topic: topic, Key: []byte(me()), Value: fmt.Appendf(nil, "order-%d", i)})
		}
		Expect(client.ProduceSync(ctx, sent...).FirstErr()).To(Succeed())

		var keys []string
		poll := func() {
			wait, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			client.PollFetches(wait).EachRecord(func(r *kgo.Record) { keys = append(keys, string(r.Key)) })
		}
		Eventually(func() []string { poll(); return keys }).WithTimeout(60 * time.Second).Should(HaveLen(len(sent)))
		poll() // nothing else arrives: no other process writes to this broker
		Expect(keys).To(HaveEach(me()))
		Expect(keys).To(HaveLen(len(sent)))
	})
})
