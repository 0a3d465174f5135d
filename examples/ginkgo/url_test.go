package checkout_test

import (
	"os"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

// The URL read once in BeforeSuite is this process's own, and nothing overrides it with a
// shared default (the report's hard-coded localhost:8080).
var _ = Describe("a URL read once at suite set-up", func() {
	It("is this process's own Redis", func(ctx SpecContext) {
		Expect(redisURL).To(Equal(os.Getenv("REDIS_URL_" + me())))
		if GinkgoParallelProcess() > 1 {
			Expect(redisURL).NotTo(Equal(os.Getenv("REDIS_URL_0")))
		}
		Expect(rdb.Get(ctx, ownerKey).Val()).To(Equal(me()))
	})
})
