package checkout_test

import (
	"os/exec"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

// A spec that restarts Redis: only this process's Redis goes down (the others' claims survive,
// which their BeforeEach checks), and the client reconnects to the new one.
var _ = Describe("a Redis restart", func() {
	It("wipes this process's Redis only, and the client reconnects", func(ctx SpecContext) {
		Expect(rdb.Set(ctx, "checkout:session", "alive", 0).Err()).To(Succeed())

		restart := exec.CommandContext(ctx, "testenv", "restart", "redis", "--worker", me())
		restart.Stdout, restart.Stderr = GinkgoWriter, GinkgoWriter
		Expect(restart.Run()).To(Succeed())

		Eventually(func() error { return rdb.Ping(ctx).Err() }).WithTimeout(30 * time.Second).Should(Succeed())
		Expect(rdb.Exists(ctx, "checkout:session").Val()).To(BeZero(), "a restarted Redis starts empty")
		Expect(claimRedis(ctx)).To(Succeed())
	})
})
