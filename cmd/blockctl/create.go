package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/blockd/blockd/pkg/blockdev"
)

// createArgs turns 'blockctl create' arguments into blockdev-create's
// options: one JSON object, or KEY=VALUE items typed by the driver's
// create options.
func createArgs(args []string) (json.RawMessage, error) {
	return optionArgs(args, "", blockdev.KeyvalCreate)
}

func (a *app) createCommand() *cobra.Command {
	var jobID string
	cmd := &cobra.Command{
		Use:   "create [--job-id ID] KEY=VALUE[,KEY=VALUE...]... | '{JSON}'",
		Short: "Create an image (blockdev-create), wait for it and dismiss the job",
		Long: `create makes an image with blockdev-create: first the host file (driver
file, size 0), then, once it is open as a node (blockctl add), the format
on it (driver qcow2, file NODE, size, and backing-file/backing-fmt for an
overlay). blockdev-create is a job: create waits for it to conclude,
dismisses it and exits 1 with the job's error if it failed.`,
		Example: `  blockctl create driver=file,filename=snap1.qcow2,size=0
  blockctl add driver=file,node-name=snap1-file,filename=snap1.qcow2
  blockctl create driver=qcow2,file=snap1-file,size=64M,backing-file=top.qcow2,backing-fmt=qcow2`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := createArgs(args)
			if err != nil {
				return err
			}
			if jobID == "" {
				jobID = fmt.Sprintf("blockctl-create-%d", time.Now().UnixNano())
			}
			return a.create(cmd.Context(), jobID, opts)
		},
	}
	cmd.Flags().StringVar(&jobID, "job-id", "", "the job's id (default: a unique one)")
	return cmd
}

// create runs one blockdev-create job to its end. The events are
// subscribed to first: creating a small image may end before the reply.
func (a *app) create(ctx context.Context, id string, opts json.RawMessage) error {
	c, err := a.conn(ctx)
	if err != nil {
		return err
	}
	sub := c.Subscribe()
	defer sub.Stop()
	if _, err := c.Call(ctx, "blockdev-create", map[string]any{"job-id": id, "options": opts}); err != nil {
		return err
	}
	for {
		e, err := sub.Next(ctx)
		if err != nil {
			return err
		}
		if e.Event != "JOB_STATUS_CHANGE" || e.Data["id"] != id || e.Data["status"] != "concluded" {
			continue
		}
		ret, err := c.Call(ctx, "query-jobs", nil)
		if err != nil {
			return err
		}
		var jobs []jobInfo
		if err := json.Unmarshal(ret, &jobs); err != nil {
			return fmt.Errorf("query-jobs: %v", err)
		}
		failure := ""
		for _, j := range jobs {
			if j.ID == id {
				failure = j.Error
			}
		}
		if _, err := c.Call(ctx, "job-dismiss", map[string]any{"id": id}); err != nil {
			return err
		}
		if failure != "" {
			return fmt.Errorf("creating the image failed: %s", failure)
		}
		return nil
	}
}
