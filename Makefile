# blockd: a block-storage daemon with qemu-storage-daemon 7.2's QMP.
#
#   make run    build blockd and start it on ./blockd.sock
#   make test   install what the tests need, then run every test:
#               unit tests (with -race) and the iotests against blockd
#               and against qemu-storage-daemon, and every fuzz target
#               for a second (its seed corpus runs with the unit tests)
#   make docs   regenerate docs/qmp-reference.md from blockd's own
#               query-qmp-schema, docs/cookbook.md from the flows
#               TestCookbook runs and the SVG pictures of its graphs in
#               docs/cookbook (make lint fails when one is out of date)
#   make fuzz   run every fuzz target for FUZZTIME (60s; the nightly form
#               is make fuzz FUZZTIME=10m), see scripts/fuzz.sh
#   make soak   32 QMP clients, an NBD writer and repeated jobs for
#               SOAKTIME (10m) on blockd, then on qemu-storage-daemon:
#               leaks, answers, image health, command rate and CPU per
#               command against qsd's (tests/soak; make test runs 20s)

GO       ?= go
# -tags ceph when librbd's headers are installed (the rbd driver);
# override with TAGS= for a pure Go build.
TAGS     ?= $(shell GO=$(GO) ./scripts/buildtags.sh)
BIN      := bin/blockd
SOCK     ?= $(CURDIR)/blockd.sock
NBDSOCK  ?= $(CURDIR)/blockd-nbd.sock
FUZZTIME ?= 60s
SOAKTIME ?= 10m
SOAK_UNGUARDED ?= 2m

.PHONY: all build run test unit iotests iotests-blockd iotests-qsd lint docs graphs deps bench fuzz fuzz-short crash soak soak-short clean

all: build

build:
	$(GO) build $(TAGS) -o $(BIN) ./cmd/blockd
	$(GO) build -o bin/qmpc ./cmd/qmpc
	$(GO) build $(TAGS) -o bin/blockctl ./cmd/blockctl

run: build
	@echo "blockd: QMP on $(SOCK), NBD server on $(NBDSOCK)"
	@echo "next, in another terminal:"
	@echo "  qemu-img create -f qcow2 disk.qcow2 1G"
	@echo "  bin/qmpc $(SOCK) 'blockdev-add {\"driver\":\"qcow2\",\"node-name\":\"disk\",\"file\":{\"driver\":\"file\",\"filename\":\"disk.qcow2\"}}'"
	@echo "  bin/qmpc $(SOCK) 'block-export-add {\"type\":\"nbd\",\"id\":\"e0\",\"node-name\":\"disk\",\"writable\":true}'"
	@echo "  bin/qmpc $(SOCK) query-named-block-nodes"
	@echo "  nbdinfo 'nbd+unix:///disk?socket=$(NBDSOCK)'"
	@echo "or with blockctl (it finds ./blockd.sock by itself):"
	@echo "  bin/blockctl add driver=qcow2,node-name=disk,file.driver=file,file.filename=disk.qcow2"
	@echo "  bin/blockctl export add nbd,id=e0,node-name=disk,writable=on"
	@echo "  bin/blockctl nodes"
	@echo "stop it with Ctrl-C (or the QMP command quit)"
	exec ./$(BIN) --qmp $(SOCK) --nbd-server addr.type=unix,addr.path=$(NBDSOCK)

deps:
	@./scripts/deps.sh

test: deps lint unit fuzz-short iotests soak-short

unit:
	$(GO) test -race -count=1 $(TAGS) ./pkg/... ./cmd/... ./internal/...

iotests: iotests-blockd iotests-qsd

iotests-blockd:
	IOTESTS_DAEMON=blockd $(GO) test -count=1 -timeout 30m ./tests/iotests/

iotests-qsd:
	IOTESTS_DAEMON=qsd $(GO) test -count=1 -timeout 30m ./tests/iotests/

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@[ -z "$(TAGS)" ] || $(GO) vet $(TAGS) ./pkg/formats/rbd/ ./cmd/blockd/
	@$(GO) mod tidy -diff >/dev/null || { echo "go.mod/go.sum are not tidy: run go mod tidy"; $(GO) mod tidy -diff; exit 1; }
	$(GO) run ./cmd/qmpdoc -check docs/qmp-reference.md
	$(GO) run ./cmd/cookbook -check docs/cookbook.md
	@tmp=$$(mktemp -d); $(MAKE) -s graphs GRAPHDIR=$$tmp; \
	if ! diff -r $$tmp docs/cookbook >/dev/null; then echo "docs/cookbook/*.svg are out of date: run make docs"; rm -rf $$tmp; exit 1; fi; rm -rf $$tmp

docs: graphs
	$(GO) run ./cmd/qmpdoc -o docs/qmp-reference.md
	$(GO) run ./cmd/cookbook -o docs/cookbook.md

# graphs draws the cookbook's graphs (the dot files TestCookbook checks
# against blockctl graph) as SVG pictures with graphviz.
GRAPHDIR ?= docs/cookbook
graphs:
	@mkdir -p $(GRAPHDIR)
	@rm -f $(GRAPHDIR)/*.svg
	@for f in tests/iotests/testdata/cookbook/*.dot; do dot -Tsvg "$$f" -o $(GRAPHDIR)/$$(basename "$$f" .dot).svg || exit 1; done

bench: build
	./bench/run.sh

fuzz:
	GO=$(GO) FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

fuzz-short:
	GO=$(GO) FUZZTIME=1s ./scripts/fuzz.sh

# The soak (docs/reliability.md): each daemon for SOAKTIME, then blockd
# alone for SOAK_UNGUARDED without the guard qsd needs; the long form
# also fails when blockd misses the rate and CPU targets against qsd.
soak: deps
	SOAKTIME=$(SOAKTIME) SOAK_UNGUARDED=$(SOAK_UNGUARDED) SOAK_RATIO=1 \
		$(GO) test -count=1 -timeout 0 -v -run '^TestSoak' ./tests/soak/

soak-short:
	SOAKTIME=20s SOAK_UNGUARDED=20s $(GO) test -count=1 -timeout 10m -v -run '^TestSoak' ./tests/soak/

# The crash campaign: kill -9 at CRASH_POINTS seeded points of every job
# (make test runs 2 per job inside the iotests). CRASH_SEED picks them.
CRASH_POINTS ?= 50
CRASH_SEED   ?= 1
crash: deps
	@mkdir -p bin
	CRASH_POINTS=$(CRASH_POINTS) CRASH_SEED=$(CRASH_SEED) IOTESTS_DAEMON=blockd \
		$(GO) test -count=1 -timeout 60m -run 'TestCrash' -v ./tests/iotests/ 2>&1 | tee bin/crash.log | grep -E '^\s*(--- |ok|FAIL|crash_test)'
	@grep -q '^ok' bin/crash.log

clean:
	rm -rf bin
