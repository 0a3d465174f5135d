package checkout_test

import (
	"fmt"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

// A counter under one fixed key, reset before each spec: with a shared Redis another process's
// reset or increments would show up in the counts.
var _ = Describe("an order counter under a fixed key", func() {
	const key = "checkout:orders:count"

	BeforeEach(func(ctx SpecContext) {
		Expect(rdb.Del(ctx, key).Err()).To(Succeed())
	})

	for spec := 1; spec <= 8; spec++ {
		It(fmt.Sprintf("counts 40 orders from zero (run %d)", spec), func(ctx SpecContext) {
			for want := int64(1); want <= 40; want++ {
				Expect(rdb.Incr(ctx, key).Val()).To(Equal(want))
				time.Sleep(10 * time.Millisecond) // time for another process to interfere, if it could
			}
		})
	}
})
