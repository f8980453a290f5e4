package bootcheck
import ("testing";"time";"context";"klp-kvm/kvm";"klp-kvm/kvm/agent";"klp-kvm/guestkernel";"os")
func TestBoot(t *testing.T){
 eng,_,err:=kvm.SelectEngine("emu"); if err!=nil{t.Fatal(err)}
 m,err:=kvm.New(kvm.Config{Engine:eng,CPUs:2,Kernel:guestkernel.Vmlinux(),Cmdline:"console=ttyS0",Console:os.Stderr})
 if err!=nil{t.Fatal(err)}
 go m.Run()
 ag:=agent.New(m.AgentPort(),agent.Options{})
 t0:=time.Now()
 for { ctx,c:=context.WithTimeout(context.Background(),2*time.Second); err=ag.Ping(ctx); c(); if err==nil{break}; if time.Since(t0)>60*time.Second{t.Fatal(err)} }
 t.Log("ping after",time.Since(t0))
 r,err:=ag.Exec(context.Background(),"cat /proc/cmdline"); t.Log(r,err)
 r,err=ag.Exec(context.Background(),"ls /sys/kernel/livepatch"); t.Log(r,err)
 r,err=ag.Exec(context.Background(),"cat /proc/klp_selftest"); t.Log(r,err)
 m.Stop()
}
